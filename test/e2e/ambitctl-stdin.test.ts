/**
 * `ambitctl apply -f -` and `delete -f -` read their documents from a pipe:
 * a producer that writes slowly (chunks with pauses) and a large one
 * (900 KiB) both reach the controller whole. The producer is a separate
 * process whose stdout is handed to ambitctl as its stdin, as a shell
 * pipeline does; Node leaves that pipe non-blocking, so a reader that does not
 * wait for data fails with EAGAIN.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AMBITCTL_MAIN, ambitctl, startController, type CliResult, type RunningController } from './harness.ts';

const HOST = '127.0.101.1';
const dataDir = mkdtempSync(join(tmpdir(), 'ambit-e2e-stdin-'));
let ctl: RunningController;

t.before(async () => {
  ctl = await startController(dataDir, [], HOST);
});
t.teardown(async () => {
  await ctl?.proc.stop();
});

/** A child process printing the file argv[1] in argv[2] chunks with argv[3] ms before each. */
const PRODUCER = `
const text = require('node:fs').readFileSync(process.argv[1], 'utf8');
const n = Number(process.argv[2]);
const pauseMs = Number(process.argv[3]);
const size = Math.ceil(text.length / n);
let i = 0;
const next = () => {
  if (i === n) return;
  const chunk = text.slice(i * size, (i + 1) * size);
  i++;
  process.stdout.write(chunk, () => setTimeout(next, pauseMs));
};
setTimeout(next, pauseMs);
`;

/** Runs `ambitctl args` with its stdin the stdout of a producer process writing `text` in `chunks` pieces. */
async function piped(args: readonly string[], text: string, chunks: number, pauseMs: number): Promise<CliResult> {
  const file = join(dataDir, `input-${randomBytes(4).toString('hex')}.yaml`);
  writeFileSync(file, text);
  const producer = spawn(process.execPath, ['-e', PRODUCER, file, String(chunks), String(pauseMs)], { stdio: ['ignore', 'pipe', 'inherit'] });
  const child = spawn(process.execPath, [AMBITCTL_MAIN, '--controller', ctl.address, '--credentials', ctl.credentials, ...args], {
    stdio: [producer.stdout!, 'pipe', 'pipe'],
    env: { ...process.env, NODE_NO_WARNINGS: '1' },
  });
  let stdout = '';
  let stderr = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const [code] = await once(child, 'exit');
  // A reader that gave up leaves the producer blocked on a full pipe (this process holds the read end too).
  if (producer.exitCode === null && producer.signalCode === null) {
    producer.kill();
    await once(producer, 'exit');
  }
  return { code: code as number | null, stdout, stderr };
}

function workloadDoc(name: string, i: number, labels: Record<string, string> = {}): string {
  const labelLines = Object.entries(labels).map(([k, v]) => `    ${k}: "${v}"\n`).join('');
  return `apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata:
  name: ${name}
  namespace: stdin
  labels:
    app: ${name}
${labelLines}spec:
  serviceAccount: ${name}
  node: node-x
  address: 10.1.${Math.floor(i / 250)}.${(i % 250) + 1}
  ports: [8080]
`;
}

async function workloadNames(): Promise<string[]> {
  const r = await ambitctl(ctl, ['workload', 'list', '-o', 'json']);
  t.equal(r.code, 0, r.stderr);
  return (JSON.parse(r.stdout) as { metadata: { name: string; namespace: string } }[]).filter((w) => w.metadata.namespace === 'stdin').map((w) => w.metadata.name).sort();
}

t.test('apply -f - and delete -f - from a slow producer', async (t) => {
  const yaml = [workloadDoc('slow-a', 0), workloadDoc('slow-b', 1)].join('---\n');
  // Six chunks a second apart: ambitctl starts reading long before the input is whole.
  const applied = await piped(['apply', '-f', '-'], yaml, 6, 1000);
  t.equal(applied.code, 0, `apply exits 0; stderr: ${applied.stderr}`);
  t.notMatch(applied.stderr, /EAGAIN/);
  t.same(await workloadNames(), ['slow-a', 'slow-b'], 'both documents applied');

  const deleted = await piped(['delete', '-f', '-'], yaml, 6, 1000);
  t.equal(deleted.code, 0, `delete exits 0; stderr: ${deleted.stderr}`);
  t.match(deleted.stdout, /Workload stdin\/slow-a deleted/);
  t.same(await workloadNames(), [], 'both deleted');
});

t.test('apply -f - of 900 KiB from a pipe', async (t) => {
  // Big label values make each document large; the whole stream is 900 KiB.
  const docs: string[] = [];
  let size = 0;
  for (let i = 0; size < 900 * 1024; i++) {
    const labels: Record<string, string> = {};
    for (let j = 0; j < 40; j++) labels[`k${j}`] = `v${i}-${j}-`.padEnd(60, 'x');
    const doc = workloadDoc(`big-${String(i).padStart(3, '0')}`, 10 + i, labels);
    docs.push(doc);
    size += doc.length + 4;
  }
  const yaml = docs.join('---\n');
  t.ok(yaml.length >= 900 * 1024, `input is ${yaml.length} bytes`);
  const r = await piped(['apply', '-f', '-'], yaml, 30, 100);
  t.equal(r.code, 0, `apply exits 0; stderr: ${r.stderr}`);
  t.equal((await workloadNames()).length, docs.length, `all ${docs.length} workloads applied`);
});
