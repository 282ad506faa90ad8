/** Small HTTP helpers for the demo's readiness checks against agents' endpoints. */
import { setTimeout as sleep } from 'node:timers/promises';

/** Polls fn until it returns a value (not undefined), or throws with the last reason. */
export async function eventually<T>(fn: () => Promise<T | undefined>, what: string, timeoutMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  for (;;) {
    try {
      const v = await fn();
      if (v !== undefined) return v;
    } catch (err) {
      last = (err as Error).message;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? ` (${last})` : ''}`);
    await sleep(100);
  }
}

export async function getJson<T>(url: string): Promise<{ status: number; body: T }> {
  const res = await fetch(url, { signal: AbortSignal.timeout(2000) });
  const text = await res.text();
  return { status: res.status, body: (res.headers.get('content-type')?.includes('json') ? JSON.parse(text) : text) as T };
}

/** One entry of an agent's admin /certs. */
export interface CertStatus {
  readonly identity: string;
  readonly state: string;
  readonly notAfter: string;
}
