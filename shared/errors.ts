/**
 * Typed errors with stable codes. Every code is listed in ERROR_CODES with a
 * one-line meaning; docs/errors.md documents each (a test keeps the two in step).
 * Codes are part of the public contract: scripts match on them, so never reuse
 * or rename one.
 */
export const ERROR_CODES = {
  AMBIT_ERR_CONFIG_INVALID: 'A configuration value (flag, env var or config file key) is invalid.',
  AMBIT_ERR_CONFIG_FILE: 'The configuration file cannot be read or parsed.',
  AMBIT_ERR_SPIFFE_INVALID: 'A SPIFFE ID is malformed or is not of the expected form.',
  AMBIT_ERR_RESOURCE_INVALID: 'A resource (Workload, Service, AuthorizationPolicy) fails validation.',
  AMBIT_ERR_RESOURCE_PARSE: 'A resource document is not valid YAML or JSON.',
  AMBIT_ERR_RESOURCE_NOT_FOUND: 'The named resource does not exist.',
  AMBIT_ERR_RESOURCE_CONFLICT: 'The resource conflicts with another (duplicate name or address).',
  AMBIT_ERR_CSR_INVALID: 'A certificate signing request is malformed, badly signed or asks for more than allowed.',
  AMBIT_ERR_CSR_KEY_UNSUPPORTED: 'A CSR key is not ECDSA P-256 or RSA of at least 2048 bits.',
  AMBIT_ERR_CERT_INVALID: 'A certificate is malformed, expired or does not chain to the trust bundle.',
  AMBIT_ERR_CA_LOAD: 'The CA material in the data directory or supplied by the user cannot be loaded.',
  AMBIT_ERR_CA_SIGN: 'The CA failed to sign a certificate.',
  AMBIT_ERR_CA_ROTATION_UNSAFE: 'A CA rotation phase would strand nodes or certificates; refused unless forced.',
  AMBIT_ERR_TOKEN_INVALID: 'A join token is malformed, unknown, expired or already used.',
  AMBIT_ERR_AUTH_UNAUTHENTICATED: 'The caller presented no valid mesh identity.',
  AMBIT_ERR_AUTH_DENIED: 'The caller is authenticated but not allowed to do this.',
  AMBIT_ERR_NODE_UNAUTHORIZED: 'A node asked for an identity not scheduled on it.',
  AMBIT_ERR_STORE_IO: 'The store failed to read or write.',
  AMBIT_ERR_STORE_REVISION: 'A requested revision is no longer held by the store (compacted).',
  AMBIT_ERR_DATA_DIR_LOCKED: 'Another process holds the data directory (two controllers or two agents on one directory).',
  AMBIT_ERR_STORE_MISMATCH: 'The data directory holds a CA but not the store it was used with (missing, emptied or another one).',
  AMBIT_ERR_STATE_REFUSED: 'An agent refused controller state from another store, or from behind the revision it holds.',
  AMBIT_ERR_RPC_UNAVAILABLE: 'The controller cannot be reached.',
  AMBIT_ERR_RPC_FAILED: 'A controller call failed.',
  AMBIT_ERR_EXPLAIN_QUERY_INVALID: 'An explain query names no source or several, its destination is not HOST:PORT, or its HTTP request is malformed.',
  AMBIT_ERR_EXPLAIN_UNKNOWN_SOURCE: 'An explain query names a source the mesh does not know (no such workload, not a workload SPIFFE ID of this trust domain, not an IP).',
  AMBIT_ERR_EXPLAIN_UNKNOWN_DESTINATION: 'An explain query names a mesh service that does not exist or does not have that port.',
  AMBIT_ERR_CONSOLE_LOGIN: 'A web console login token is unknown, expired or already used, or the console is off.',
  AMBIT_ERR_CLI_USAGE: 'An ambitctl command was called with wrong arguments.',
  AMBIT_ERR_INTERNAL: 'An unexpected internal failure; report it.',
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

export class AmbitError extends Error {
  readonly code: ErrorCode;
  /** Structured facts (field name, value, identity) that logs and the CLI can show. */
  readonly details: Readonly<Record<string, unknown>>;

  constructor(code: ErrorCode, message: string, options: { cause?: unknown; details?: Record<string, unknown> } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'AmbitError';
    this.code = code;
    this.details = Object.freeze({ ...(options.details ?? {}) });
  }
}

export function isAmbitError(err: unknown, code?: ErrorCode): err is AmbitError {
  return err instanceof AmbitError && (code === undefined || err.code === code);
}

/** The message of an unknown thrown value, for logs and user-facing text. */
export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}
