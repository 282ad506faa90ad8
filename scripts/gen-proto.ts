// Regenerates shared/proto/gen/ambit.ts and shared/proto/gen/dataplane.ts
// from shared/proto/ambit.proto and shared/proto/dataplane.proto with
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
  // Node runs TypeScript by stripping types, which cannot strip an enum: enums become const objects.
  'enumsAsLiterals=true',
].join(',');

/** The .proto files in shared/proto; each X.proto becomes gen/X.ts. */
export const PROTO_FILES = ['ambit.proto', 'dataplane.proto'];

export function generate(outDir: string): void {
  mkdirSync(outDir, { recursive: true });
  execFileSync('protoc', [
    `--plugin=protoc-gen-ts_proto=${join(root, 'node_modules/.bin/protoc-gen-ts_proto')}`,
    `--ts_proto_out=${outDir}`,
    `--ts_proto_opt=${TS_PROTO_OPTS}`,
    `--proto_path=${join(root, 'shared/proto')}`,
    ...PROTO_FILES,
  ], { stdio: 'inherit' });
}

if (process.argv[1] === fileURLToPath(import.meta.url)) generate(join(root, 'shared/proto/gen'));
