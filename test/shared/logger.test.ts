/**
 * shared/logger.ts stderrSink: a log reader that falls behind (a full,
 * non-blocking stderr pipe) loses no line, and lines stay whole and in order;
 * past the bounded backlog whole lines are dropped and counted. Found by
 * test/soak/load.test.ts: 5,000 connections closing within two seconds wrote
 * their access log lines faster than a busy reader took them, and the sink
 * dropped the overflow silently.
 */
import t from 'tap';
import { spawn } from 'node:child_process';

const LOGGER_URL = new URL('../../shared/logger.ts', import.meta.url).href;

/**
 * A child writes `lines` batched log lines of ~170 bytes as fast as it can
 * into its stderr pipe, which this process does not read until the child
 * says (on stdout) that it wrote them all. The child exits when its stdin
 * closes. Resolves with the lines this process received.
 */
async function burst(lines: number): Promise<string[]> {
  const script = `
    import { stderrSink } from ${JSON.stringify(LOGGER_URL)};
    const sink = stderrSink(2);
    const pad = 'x'.repeat(150);
    for (let i = 0; i < ${lines}; i++) sink.batched.write('{"level":"info","i":' + i + ',"pad":"' + pad + '"}\\n');
    process.stdout.write('written\\n');
    process.stdin.on('end', () => { sink.flush(); process.exit(0); }).resume();
  `;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['pipe', 'pipe', 'pipe'] });
  child.stderr!.pause();
  let text = '';
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the child did not finish writing')), 30_000);
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      if (d.includes('written')) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once('exit', (code) => reject(new Error(`child exited early (${code}): ${text.slice(-500)}`)));
  });
  // The pipe is full and the child's backlog holds the rest: read it all now.
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (text += d));
  child.stderr!.resume();
  const wanted = (): boolean => text.includes(`"i":${lines - 1},`) || text.includes('log lines dropped');
  for (let waited = 0; !wanted() && waited < 20_000; waited += 50) await new Promise((r) => setTimeout(r, 50));
  // A little longer for a trailing "dropped" note.
  await new Promise((r) => setTimeout(r, 200));
  child.stdin!.end();
  await new Promise((r) => child.once('close', r));
  return text.split('\n').filter((l) => l !== '');
}

function parse(lines: string[]): { indexes: number[]; notes: { msg: string }[]; malformed: number } {
  const indexes: number[] = [];
  const notes: { msg: string }[] = [];
  let malformed = 0;
  for (const l of lines) {
    try {
      const o = JSON.parse(l) as { i?: number; msg?: string };
      if (typeof o.i === 'number') indexes.push(o.i);
      else notes.push({ msg: String(o.msg) });
    } catch {
      malformed++;
    }
  }
  return { indexes, notes, malformed };
}

t.test('a reader that falls behind loses no line: they wait in the backlog, whole and in order', async (t) => {
  const n = 20_000; // ~3.4 MB: far more than a pipe holds, less than the backlog bound
  const { indexes, notes, malformed } = parse(await burst(n));
  t.equal(malformed, 0, 'every line is whole JSON');
  t.equal(indexes.length, n, 'every line arrived');
  t.ok(indexes.every((v, i) => v === i), 'in order');
  t.same(notes, [], 'nothing dropped');
});

t.test('past the bounded backlog whole lines are dropped, counted, and the count is logged', async (t) => {
  const n = 70_000; // ~12 MB: more than the 8 MiB backlog
  const { indexes, notes, malformed } = parse(await burst(n));
  t.equal(malformed, 0, 'every line is whole JSON');
  t.ok(indexes.length < n, `some lines were dropped (${n - indexes.length})`);
  t.ok(indexes.length > n / 2, `most were kept (${indexes.length})`);
  t.ok(indexes.every((v, i) => i === 0 || v > indexes[i - 1]!), 'the kept lines are in order');
  const note = notes.find((x) => /^\d+ log lines dropped/.test(x.msg));
  t.ok(note, 'a warning line says how many lines were dropped');
  t.equal(Number(note?.msg.split(' ')[0]), n - indexes.length, 'and the number is right');
});
