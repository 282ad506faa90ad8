// The agent's end-to-end suite (agent-suite.ts) with both agents on the
// node:http2 data path, on 127.0.3.0/24.
import { agentSuite } from './agent-suite.ts';

agentSuite({ net: '127.0.3', dataplane: 'node' });
