import { AmbitError } from '../../shared/errors.ts';
import { ROTATION_PHASES, type RotationPhase } from './authority.ts';

export function parsePhase(phase: string): RotationPhase {
  if (!(ROTATION_PHASES as readonly string[]).includes(phase)) {
    throw new AmbitError('AMBIT_ERR_RESOURCE_INVALID', `unknown rotation phase ${JSON.stringify(phase)}; expected one of ${ROTATION_PHASES.join(', ')}`, {
      details: { field: 'phase', value: phase },
    });
  }
  return phase as RotationPhase;
}
