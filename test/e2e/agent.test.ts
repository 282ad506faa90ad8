// The agent's end-to-end suite (agent-suite.ts) on 127.0.3.0/24: two agents,
// every byte through their ambit-dataplane. The executable must have been
// built (npm ci does, with dataplane/build.sh): without it the agent refuses
// to start and this file fails.
import { agentSuite } from './agent-suite.ts';

agentSuite({ net: '127.0.3' });
