import { Command } from 'commander';
import { AmbitError } from '../../../shared/errors.ts';
import { KINDS, type Kind, type Resource, type ResourceKey } from '../../../shared/resources/types.ts';
import { example, withApi, type CliContext } from '../context.ts';
import { applyResults } from './resources.ts';

async function readSource(ctx: CliContext, file: string): Promise<{ text: string; source: string }> {
  if (file === '-') {
    try {
      return { text: await ctx.readStdin(), source: 'stdin' };
    } catch (cause) {
      throw new AmbitError('AMBIT_ERR_CLI_USAGE', `cannot read -f - (standard input): ${(cause as Error).message}`, { cause, details: { field: 'filename' } });
    }
  }
  try {
    return { text: ctx.readFile(file), source: file };
  } catch (cause) {
    throw new AmbitError('AMBIT_ERR_CLI_USAGE', `cannot read -f ${file}: ${(cause as Error).message}`, { cause, details: { field: 'filename' } });
  }
}

/** The kind/namespace/name of each document: all delete -f needs, so it works on files older schemas wrote. */
function keysOf(docs: readonly { doc: unknown; where: string }[]): ResourceKey[] {
  return docs.map(({ doc, where }) => {
    const d = doc as { kind?: unknown; metadata?: { name?: unknown; namespace?: unknown } } | null;
    const kind = d?.kind;
    if (typeof kind !== 'string' || !(KINDS as readonly string[]).includes(kind)) {
      throw new AmbitError('AMBIT_ERR_RESOURCE_INVALID', `${where}: kind ${JSON.stringify(kind)} is not one of ${KINDS.join(', ')}`, { details: { field: 'kind', where } });
    }
    const name = d?.metadata?.name;
    if (typeof name !== 'string' || name === '') {
      throw new AmbitError('AMBIT_ERR_RESOURCE_INVALID', `${where}: metadata.name is required`, { details: { field: 'metadata.name', where } });
    }
    const ns = d?.metadata?.namespace;
    return { kind: kind as Kind, namespace: typeof ns === 'string' && ns !== '' ? ns : 'default', name };
  });
}

/** metadata.revision of a validated document (validation checked it is a non-negative integer), 0 when absent. */
function baseRevision(doc: unknown): number {
  const r = (doc as { metadata?: { revision?: unknown } } | null)?.metadata?.revision;
  return typeof r === 'number' ? r : 0;
}

export function applyCommand(ctx: CliContext): Command {
  return new Command('apply')
    .description('create or update the resources in a YAML/JSON file, all or nothing; a document with metadata.revision (as get -o yaml prints it) is refused with a conflict if the resource changed since')
    .requiredOption('-f, --filename <file>', 'file with one or more documents ("-" for stdin)')
    .option('--dry-run', 'validate on the controller and report what would change, without changing it')
    .addHelpText('after', example('ambitctl apply -f examples/demo.yaml\ncat policy.yaml | ambitctl apply -f -'))
    .action(async (o: { filename: string; dryRun?: boolean }, c: Command) => {
      const { text, source } = await readSource(ctx, o.filename);
      const [{ parseSourcedDocuments, validateAll }, { resourceToWire }] = await Promise.all([import('../../../shared/resources/validate.ts'), import('../../../shared/resources/wire.ts')]);
      // Validate locally first for a fast, precise error; the controller validates again.
      const docs = parseSourcedDocuments(text, source);
      const resources = validateAll(docs);
      if (resources.length === 0) throw new AmbitError('AMBIT_ERR_RESOURCE_INVALID', `${source}: no resources found`);
      // A document's metadata.revision (as `get -o yaml` prints it) is the revision the update is based on: sent as is, refused by the controller if stale.
      const wire = resources.map((r, i) => resourceToWire({ ...r, metadata: { ...r.metadata, revision: baseRevision(docs[i]?.doc) } } as Resource));
      await withApi(ctx, c, async (api) => {
        const res = await api.call('Apply', api.client.apply, { resources: wire, createOnly: false, dryRun: o.dryRun === true });
        applyResults(ctx, res, o.dryRun === true);
      });
    });
}

export function deleteCommand(ctx: CliContext): Command {
  return new Command('delete')
    .description('delete the resources named in a YAML/JSON file, all or nothing')
    .requiredOption('-f, --filename <file>', 'file with one or more documents ("-" for stdin)')
    .option('--ignore-not-found', 'skip resources that do not exist instead of failing')
    .addHelpText('after', example('ambitctl delete -f examples/demo.yaml'))
    .action(async (o: { filename: string; ignoreNotFound?: boolean }, c: Command) => {
      const { text, source } = await readSource(ctx, o.filename);
      const [{ parseSourcedDocuments }, { keyToWire }] = await Promise.all([import('../../../shared/resources/validate.ts'), import('../../../shared/resources/wire.ts')]);
      const keys = keysOf(parseSourcedDocuments(text, source));
      await withApi(ctx, c, async (api) => {
        const res = await api.call('Delete', api.client.delete, { keys: keys.map(keyToWire), ignoreNotFound: o.ignoreNotFound === true });
        for (const k of res.deleted) ctx.out(`${k.kind} ${k.namespace}/${k.name} deleted\n`);
        if (res.deleted.length === 0) ctx.out('nothing deleted\n');
      });
    });
}
