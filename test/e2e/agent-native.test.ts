// The agent's end-to-end suite (agent-suite.ts) with node-b serving inbound
// HBONE through ambit-dataplane (--dataplane native), on 127.0.18.0/24: every
// tunnel in it ends at the native data path. The executable must have been
// built (npm run build:dataplane; .ci/run does): without it the agent refuses
// to start and this file fails.
import { agentSuite } from './agent-suite.ts';

agentSuite({ net: '127.0.18', dataplane: 'native' });
