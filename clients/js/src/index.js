// imcloud JavaScript SDK: `import { Client } from './index.js'`.
export { Client, RequestError, backoffDelay } from './client.js';
export { Sequencer } from './sequence.js';
export { HEADER_LEN, Op, ProtocolError, VERSION, closeInfo, decodeAll, decodeFrame, encode, text } from './protocol.js';
