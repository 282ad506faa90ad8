import t from 'tap';
import { Metadata, status, type ServiceError } from '@grpc/grpc-js';
import { AmbitError, ERROR_CODES, type ErrorCode } from '../../shared/errors.ts';
import { fromServiceError, toStatus } from '../../shared/grpc-errors.ts';

/** What a grpc-js client sees when the server sent `s` (status, details and trailers). */
function asServiceError(s: ReturnType<typeof toStatus>): ServiceError {
  return Object.assign(new Error(`${s.code} ${status[s.code!]}: ${s.details}`), { code: s.code!, details: s.details!, metadata: s.metadata! });
}

t.test('toStatus maps Ambit codes to gRPC statuses and sends the code trailer', async (t) => {
  const cases: [ErrorCode, status][] = [
    ['AMBIT_ERR_CONFIG_INVALID', status.INVALID_ARGUMENT],
    ['AMBIT_ERR_RESOURCE_INVALID', status.INVALID_ARGUMENT],
    ['AMBIT_ERR_RESOURCE_NOT_FOUND', status.NOT_FOUND],
    ['AMBIT_ERR_RESOURCE_CONFLICT', status.ALREADY_EXISTS],
    ['AMBIT_ERR_CSR_INVALID', status.INVALID_ARGUMENT],
    ['AMBIT_ERR_TOKEN_INVALID', status.UNAUTHENTICATED],
    ['AMBIT_ERR_AUTH_UNAUTHENTICATED', status.UNAUTHENTICATED],
    ['AMBIT_ERR_AUTH_DENIED', status.PERMISSION_DENIED],
    ['AMBIT_ERR_NODE_UNAUTHORIZED', status.PERMISSION_DENIED],
    ['AMBIT_ERR_STORE_REVISION', status.OUT_OF_RANGE],
    ['AMBIT_ERR_STORE_IO', status.UNAVAILABLE],
    ['AMBIT_ERR_CA_LOAD', status.FAILED_PRECONDITION],
    ['AMBIT_ERR_CA_SIGN', status.INTERNAL], // no specific status: INTERNAL, but still typed
  ];
  for (const [code, expected] of cases) {
    const s = toStatus(new AmbitError(code, `message for ${code}`));
    t.equal(s.code, expected, `${code} → ${status[expected]}`);
    t.equal(s.details, `message for ${code}`, 'the message is the status detail');
    t.same(s.metadata?.get('ambit-error-code'), [code], 'code trailer');
    t.same(s.metadata?.get('ambit-error-field'), [], 'no field trailer without a field');
  }
  const withField = toStatus(new AmbitError('AMBIT_ERR_RESOURCE_INVALID', 'spec.ports[0] must be 1-65535', { details: { field: 'spec.ports[0]' } }));
  t.same(withField.metadata?.get('ambit-error-field'), ['spec.ports[0]'], 'field trailer');
  const nonStringField = toStatus(new AmbitError('AMBIT_ERR_RESOURCE_INVALID', 'x', { details: { field: 3 } }));
  t.same(nonStringField.metadata?.get('ambit-error-field'), [], 'only a string field is sent');
});

t.test('a non-Ambit error is INTERNAL and does not leak its message', async (t) => {
  for (const err of [new Error('SQLITE_CORRUPT at /var/lib/ambit/secret-path.db'), 'a string', undefined, { code: 5 }]) {
    const s = toStatus(err);
    t.equal(s.code, status.INTERNAL);
    t.equal(s.details, 'internal error (see controller log)');
    t.notMatch(s.details ?? '', /secret|SQLITE|string/);
    t.same(s.metadata?.get('ambit-error-code'), ['AMBIT_ERR_INTERNAL']);
  }
});

t.test('fromServiceError rebuilds the AmbitError from the trailers', async (t) => {
  for (const code of Object.keys(ERROR_CODES) as ErrorCode[]) {
    const original = new AmbitError(code, `boom ${code}`, { details: { field: 'metadata.name' } });
    const rebuilt = fromServiceError(asServiceError(toStatus(original)), 'apply');
    t.equal(rebuilt.code, code, code);
    t.equal(rebuilt.message, `boom ${code}`);
    t.equal(rebuilt.details.field, 'metadata.name');
  }
  const plain = fromServiceError(asServiceError(toStatus(new AmbitError('AMBIT_ERR_AUTH_DENIED', 'no'))), 'apply');
  t.equal(plain.details.grpcStatus, status.PERMISSION_DENIED, 'the gRPC status is kept in the details');
  t.notOk('field' in plain.details, 'no field when none was sent');
  t.ok(plain.cause, 'the ServiceError is the cause');
  const same = new AmbitError('AMBIT_ERR_CLI_USAGE', 'x');
  t.equal(fromServiceError(same, 'apply'), same, 'an AmbitError passes through');
});

t.test('fromServiceError without a (valid) code trailer', async (t) => {
  const md = (code?: string): Metadata => {
    const m = new Metadata();
    if (code !== undefined) m.set('ambit-error-code', code);
    return m;
  };
  const se = (code: status, details: string, metadata = md()): ServiceError => Object.assign(new Error(details), { code, details, metadata });

  for (const code of [status.UNAVAILABLE, status.DEADLINE_EXCEEDED]) {
    const e = fromServiceError(se(code, 'No connection established'), 'watch');
    t.equal(e.code, 'AMBIT_ERR_RPC_UNAVAILABLE', status[code]);
    t.match(e.message, /^watch: controller unreachable \(No connection established\)/);
    t.equal(e.details.grpcStatus, code);
  }
  const failed = fromServiceError(se(status.UNIMPLEMENTED, 'method not found'), 'watch');
  t.equal(failed.code, 'AMBIT_ERR_RPC_FAILED');
  t.equal(failed.message, 'watch: method not found');
  t.equal(fromServiceError(se(status.INTERNAL, 'x', md('AMBIT_ERR_NOT_A_REAL_CODE')), 'w').code, 'AMBIT_ERR_RPC_FAILED', 'an unknown code trailer is not trusted');
  for (const inherited of ['toString', 'constructor', '__proto__', 'hasOwnProperty']) {
    t.equal(fromServiceError(se(status.INTERNAL, 'x', md(inherited)), 'w').code, 'AMBIT_ERR_RPC_FAILED', `"${inherited}" is not an error code`);
  }
  t.equal(fromServiceError(se(status.UNAVAILABLE, 'down', md('AMBIT_ERR_STORE_IO')), 'w').code, 'AMBIT_ERR_STORE_IO', 'the trailer wins over the status');
  const weird = fromServiceError(new Error('socket hang up'), 'bootstrap');
  t.equal(weird.code, 'AMBIT_ERR_RPC_FAILED', 'a plain Error');
  t.equal(weird.message, 'bootstrap: socket hang up');
  t.equal(fromServiceError('just a string', 'x').code, 'AMBIT_ERR_RPC_FAILED', 'not even an Error');
});
