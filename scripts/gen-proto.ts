// Regenerates shared/proto/gen/ambit.ts from shared/proto/ambit.proto with
// ts-proto. Needs protoc (Debian: protobuf-compiler). The output is checked in
// so building and running need no protoc; test/shared/proto.test.ts checks it
// is current.
import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
export const TS_PROTO_OPTS = [
  'outputServices=grpc-js',
  'esModuleInterop=true',
  'env=node',
  'forceLong=number',
  'oneof=unions',
  'useOptionals=none',
  'outputJsonMethods=false',
  'outputPartialMethods=true',
  'useExactTypes=false',
  'importSuffix=.ts',
].join(',');

export function generate(outDir: string): void {
  mkdirSync(outDir, { recursive: true });
  execFileSync('protoc', [
    `--plugin=protoc-gen-ts_proto=${join(root, 'node_modules/.bin/protoc-gen-ts_proto')}`,
    `--ts_proto_out=${outDir}`,
    `--ts_proto_opt=${TS_PROTO_OPTS}`,
    `--proto_path=${join(root, 'shared/proto')}`,
    'ambit.proto',
  ], { stdio: 'inherit' });
}

if (process.argv[1] === fileURLToPath(import.meta.url)) generate(join(root, 'shared/proto/gen'));
