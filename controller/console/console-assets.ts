import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export interface Asset {
  readonly type: string;
  readonly body: Buffer;
}

/**
 * The console's browser files, read once at start. Its own pages live in
 * assets/ beside this module (in a checkout; a build under dist/ finds them
 * in the source tree it was built from). preact and htm are served as the
 * ES modules their packages ship, from node_modules, under /vendor/: the
 * browser loads them through an import map, so there is no bundler and no
 * build step, and no file comes from anywhere but the controller.
 */
export interface ConsoleAssets {
  /** The page shell for a signed-in admin (no data in it: views fetch /api/*). */
  readonly index: Buffer;
  /** The login page, with an optional error line. */
  login(error?: string): Buffer;
  /** Files under /assets/ and /vendor/, by path. */
  readonly files: ReadonlyMap<string, Asset>;
  /** Those any visitor may load (the login page's script and the style sheet). */
  readonly public: ReadonlySet<string>;
  /** CSP source of the inline import map: "'sha256-…'". */
  readonly importMapHash: string;
}

const JS = 'text/javascript; charset=utf-8';

function assetsDir(): string {
  const beside = fileURLToPath(new URL('./assets/', import.meta.url));
  if (existsSync(beside)) return beside;
  // dist/controller/console/ → the source tree's controller/console/assets/
  return fileURLToPath(new URL('../../../controller/console/assets/', import.meta.url));
}

function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

export function loadConsoleAssets(): ConsoleAssets {
  const dir = assetsDir();
  const read = (name: string): Buffer => readFileSync(`${dir}${name}`);
  const vendor = (specifier: string): Buffer => readFileSync(fileURLToPath(import.meta.resolve(specifier)));
  const importMap = `<script type="importmap">${JSON.stringify({ imports: { preact: '/vendor/preact.mjs', 'preact/hooks': '/vendor/hooks.mjs', htm: '/vendor/htm.mjs' } })}</script>`;
  const inline = importMap.slice('<script type="importmap">'.length, -'</script>'.length);
  const files = new Map<string, Asset>([
    ['/assets/app.js', { type: JS, body: read('app.js') }],
    ['/assets/login.js', { type: JS, body: read('login.js') }],
    ['/assets/console.css', { type: 'text/css; charset=utf-8', body: read('console.css') }],
    ['/assets/favicon.svg', { type: 'image/svg+xml', body: read('favicon.svg') }],
    // The shipped modules end with a sourceMappingURL comment; the maps are not served (404), which browsers ignore.
    ['/vendor/preact.mjs', { type: JS, body: vendor('preact') }],
    ['/vendor/hooks.mjs', { type: JS, body: vendor('preact/hooks') }],
    ['/vendor/htm.mjs', { type: JS, body: vendor('htm') }],
  ]);
  const loginPage = read('login.html').toString('utf8');
  return {
    index: Buffer.from(read('index.html').toString('utf8').replace('<!--IMPORTMAP-->', importMap)),
    login: (error) => Buffer.from(loginPage.replace('<!--ERROR-->', error ? `<p class="error" role="alert">${escapeHtml(error)}</p>` : '')),
    files,
    public: new Set(['/assets/login.js', '/assets/console.css', '/assets/favicon.svg']),
    importMapHash: `'sha256-${createHash('sha256').update(inline).digest('base64')}'`,
  };
}
