import { Metadata, status, type ServiceError, type StatusObject } from '@grpc/grpc-js';
import { AmbitError, ERROR_CODES, type ErrorCode } from './errors.ts';

/**
 * Typed errors across gRPC: the server sends the stable Ambit code in the
 * `ambit-error-code` trailer beside a matching gRPC status, so clients (agent,
 * ambitctl) rebuild the same AmbitError instead of parsing messages.
 */
const CODE_TRAILER = 'ambit-error-code';
const FIELD_TRAILER = 'ambit-error-field';

const STATUS_OF: Partial<Record<ErrorCode, status>> = {
  AMBIT_ERR_CONFIG_INVALID: status.INVALID_ARGUMENT,
  AMBIT_ERR_SPIFFE_INVALID: status.INVALID_ARGUMENT,
  AMBIT_ERR_RESOURCE_INVALID: status.INVALID_ARGUMENT,
  AMBIT_ERR_RESOURCE_PARSE: status.INVALID_ARGUMENT,
  AMBIT_ERR_RESOURCE_NOT_FOUND: status.NOT_FOUND,
  AMBIT_ERR_RESOURCE_CONFLICT: status.ALREADY_EXISTS,
  AMBIT_ERR_CSR_INVALID: status.INVALID_ARGUMENT,
  AMBIT_ERR_CSR_KEY_UNSUPPORTED: status.INVALID_ARGUMENT,
  AMBIT_ERR_CERT_INVALID: status.UNAUTHENTICATED,
  AMBIT_ERR_TOKEN_INVALID: status.UNAUTHENTICATED,
  AMBIT_ERR_AUTH_UNAUTHENTICATED: status.UNAUTHENTICATED,
  AMBIT_ERR_AUTH_DENIED: status.PERMISSION_DENIED,
  AMBIT_ERR_NODE_UNAUTHORIZED: status.PERMISSION_DENIED,
  AMBIT_ERR_STORE_REVISION: status.OUT_OF_RANGE,
  AMBIT_ERR_STORE_IO: status.UNAVAILABLE,
  AMBIT_ERR_CA_LOAD: status.FAILED_PRECONDITION,
  AMBIT_ERR_CA_ROTATION_UNSAFE: status.FAILED_PRECONDITION,
  AMBIT_ERR_EXPLAIN_QUERY_INVALID: status.INVALID_ARGUMENT,
  AMBIT_ERR_CONSOLE_LOGIN: status.FAILED_PRECONDITION,
};

/** Server side: an error thrown by a handler → the status object grpc-js sends. */
export function toStatus(err: unknown): Partial<StatusObject> {
  const metadata = new Metadata();
  if (err instanceof AmbitError) {
    metadata.set(CODE_TRAILER, err.code);
    const field = err.details.field;
    if (typeof field === 'string') metadata.set(FIELD_TRAILER, field);
    return { code: STATUS_OF[err.code] ?? status.INTERNAL, details: err.message, metadata };
  }
  metadata.set(CODE_TRAILER, 'AMBIT_ERR_INTERNAL');
  return { code: status.INTERNAL, details: 'internal error (see controller log)', metadata };
}

/** Client side: a failed call → AmbitError with the server's code, or RPC_UNAVAILABLE/RPC_FAILED. */
export function fromServiceError(err: unknown, what: string): AmbitError {
  if (err instanceof AmbitError) return err;
  const se = err as Partial<ServiceError>;
  const code = se.metadata?.get(CODE_TRAILER)[0];
  if (typeof code === 'string' && Object.hasOwn(ERROR_CODES, code)) { // not `in`: "toString" is in every object
    const field = se.metadata?.get(FIELD_TRAILER)[0];
    return new AmbitError(code as ErrorCode, se.details ?? se.message ?? what, {
      cause: err,
      details: { grpcStatus: se.code, ...(typeof field === 'string' ? { field } : {}) },
    });
  }
  if (se.code === status.UNAVAILABLE || se.code === status.DEADLINE_EXCEEDED) {
    return new AmbitError('AMBIT_ERR_RPC_UNAVAILABLE', `${what}: controller unreachable (${se.details ?? se.message ?? 'no detail'})`, {
      cause: err,
      details: { grpcStatus: se.code },
    });
  }
  return new AmbitError('AMBIT_ERR_RPC_FAILED', `${what}: ${se.details ?? se.message ?? String(err)}`, { cause: err, details: { grpcStatus: se.code } });
}
