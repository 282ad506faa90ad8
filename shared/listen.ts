import type { AddressInfo, Server } from 'node:net';

/** Listens and resolves with the bound address, or rejects with the bind error (EADDRINUSE, EACCES). */
export function listenOn(server: Server, host: string, port: number): Promise<AddressInfo> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve(server.address() as AddressInfo);
    });
  });
}
