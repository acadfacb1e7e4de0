export * from './frames.js';
export * from './limits.js';
export { clientFrameSchemas, roomSchema, refSchema, type ClientFrameType } from './schemas.js';
export { decodeClientFrame, type DecodeError, type DecodeResult } from './decode.js';
export { encodeServerFrame } from './encode.js';
