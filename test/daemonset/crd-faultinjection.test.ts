import t from 'tap';
import { AmbitError } from '../../shared/errors.ts';
import { validateResource } from '../../shared/resources/validate.ts';
import { structuralProblems, validateCustomResource } from './crd-schema.ts';
import { at, find, loadManifests, obj, type Obj } from './load.ts';

/*
 * The FaultInjection CRD (daemonset/crd.yaml) against Ambit's validator
 * (shared/resources/validate-route.ts): the API server admits what Ambit
 * accepts and refuses every structural mistake Ambit refuses.
 */
const crd = find(loadManifests(['crd.yaml']), 'CustomResourceDefinition', 'faultinjections.ambit.dev') ?? {};
const version = obj((at(crd, 'spec.versions') as unknown[] | undefined)?.[0]);
const schema = obj(at(version, 'schema.openAPIV3Schema'));
const fault = (spec: unknown): Obj => ({ apiVersion: 'ambit.dev/v1alpha1', kind: 'FaultInjection', metadata: { name: 'f', namespace: 'shop' }, spec });

function ambitVerdict(doc: unknown): string | undefined {
  try {
    validateResource(doc, 'test');
    return undefined;
  } catch (err) {
    if (err instanceof AmbitError) return err.message;
    throw err;
  }
}

t.test('the CRD is the one the controller reads, and structural', async (t) => {
  t.equal(at(crd, 'spec.group'), 'ambit.dev');
  t.equal(at(crd, 'spec.names.kind'), 'FaultInjection');
  t.equal(at(crd, 'metadata.name'), `${String(at(crd, 'spec.names.plural'))}.${String(at(crd, 'spec.group'))}`);
  t.equal(`${String(at(crd, 'spec.group'))}/${String(version.name)}`, 'ambit.dev/v1alpha1');
  t.same(structuralProblems(schema), []);
  t.same(Object.keys(obj(at(schema, 'properties.spec.properties'))).sort(), ['abort', 'delay']);
});

const ACCEPTED: Record<string, unknown> = {
  'a delay': { delay: { fixedDelay: '2s', percentage: 10 } },
  'an abort': { abort: { httpStatus: 503 } },
  'both, gRPC status by name and by number': { delay: { fixedDelay: '1m30s' }, abort: { httpStatus: 500, grpcStatus: 'UNAVAILABLE', percentage: 0.5 } },
  'gRPC status by number': { abort: { httpStatus: 500, grpcStatus: 14 } },
};
const REFUSED: Record<string, unknown> = {
  'neither delay nor abort': {},
  'a delay without fixedDelay': { delay: { percentage: 10 } },
  'a duration with a space': { delay: { fixedDelay: '2 s' } },
  'a fractional duration': { delay: { fixedDelay: '1.5s' } },
  'percentage over 100': { abort: { httpStatus: 503, percentage: 101 } },
  'status 200': { abort: { httpStatus: 200 } },
  'status 600': { abort: { httpStatus: 600 } },
  'an unknown field': { abort: { httpStatus: 503, percent: 5 } },
  'no httpStatus': { abort: { grpcStatus: 14 } },
};

t.test('the CRD and Ambit agree', async (t) => {
  for (const [what, spec] of Object.entries(ACCEPTED)) {
    t.equal(ambitVerdict(fault(spec)), undefined, `${what}: Ambit accepts`);
    t.same(validateCustomResource(schema, fault(spec)), [], `${what}: the CRD admits`);
  }
  for (const [what, spec] of Object.entries(REFUSED)) {
    t.not(ambitVerdict(fault(spec)), undefined, `${what}: Ambit refuses`);
    t.not(validateCustomResource(schema, fault(spec)), [], `${what}: the CRD refuses`);
  }
});
