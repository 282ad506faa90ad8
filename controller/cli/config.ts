import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { parseHostPortList } from '../../shared/config-parse.ts';
import { controllerListProblem, type Controllers } from '../../shared/controller-target.ts';
import { AmbitError } from '../../shared/errors.ts';

/**
 * Where ambitctl finds the controller and its admin credentials (DESIGN §6):
 * flags, then AMBIT_CONTROLLER / AMBIT_CREDENTIALS, then the controller's data
 * directory on this host (AMBIT_DATA_DIR, or the packaged default locations).
 */
export interface CliConnection {
  /** One controller, or every replica's address (a call goes to one that answers). */
  readonly controller: Controllers;
  readonly credentialsDir: string;
}

/** The controller ambitctl talks to when neither --controller nor AMBIT_CONTROLLER names one. */
export const DEFAULT_CONTROLLER = '127.0.0.1:15012';

export const DEFAULT_DATA_DIRS = ['/var/lib/ambit-controller', '/var/lib/ambit/controller'] as const;

export function resolveConnection(
  flags: { controller?: string | undefined; credentials?: string | undefined },
  env: Readonly<Record<string, string | undefined>>,
): CliConnection {
  const rawController = flags.controller ?? env.AMBIT_CONTROLLER ?? DEFAULT_CONTROLLER;
  let controller: Controllers;
  try {
    const list = parseHostPortList(rawController, 15012);
    const problem = controllerListProblem(list);
    if (problem !== undefined) throw new Error(problem);
    controller = list.length === 1 ? list[0]! : list;
  } catch (cause) {
    throw new AmbitError('AMBIT_ERR_CLI_USAGE', `invalid --controller ${JSON.stringify(rawController)}: ${(cause as Error).message}`, { cause, details: { field: 'controller' } });
  }
  const explicit = flags.credentials ?? env.AMBIT_CREDENTIALS;
  if (explicit) return { controller, credentialsDir: explicit };
  const candidates = [...(env.AMBIT_DATA_DIR ? [env.AMBIT_DATA_DIR] : []), ...DEFAULT_DATA_DIRS].map((d) => join(d, 'admin'));
  const found = candidates.find((d) => existsSync(join(d, 'cert.pem')));
  if (!found) {
    throw new AmbitError('AMBIT_ERR_CLI_USAGE', `no admin credentials: pass --credentials DIR (with cert.pem, key.pem, ca.pem) or set AMBIT_CREDENTIALS; looked in ${candidates.join(', ')}`, {
      details: { field: 'credentials' },
    });
  }
  return { controller, credentialsDir: found };
}
