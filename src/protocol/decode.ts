import type { ErrorCode } from '../errors.js';
import type { ClientFrame, PublishFrame } from './frames.js';
import { MAX_CID_LENGTH, MAX_REF_LENGTH, isRoomName } from './limits.js';
import { clientFrameSchemas, type ClientFrameType } from './schemas.js';

/** Why a frame was refused: becomes one `error` frame. */
export interface DecodeError {
  /** `unknown_type` for a `type` the protocol does not have, else `bad_request`. */
  code: Extract<ErrorCode, 'bad_request' | 'unknown_type'>;
  /** What is wrong, for people. */
  message: string;
  /** The frame's `ref`, when it had a valid one. */
  ref?: string;
  /** For a frame that failed its schema: `issues`, each a `path` and a `message`. */
  details?: unknown;
}

/** The outcome of {@link decodeClientFrame}. */
export type DecodeResult =
  | {
      /** The frame is valid. */
      ok: true;
      /** The decoded frame, its fields checked against its schema. */
      frame: ClientFrame;
    }
  | {
      /** The frame was refused. */
      ok: false;
      /** Why; send it back as an `error` frame. */
      error: DecodeError;
    };

const textDecoder = new TextDecoder('utf-8', { fatal: true });

function fail(code: DecodeError['code'], message: string, ref?: string, details?: unknown): DecodeResult {
  const error: DecodeError = { code, message };
  if (ref !== undefined) error.ref = ref;
  if (details !== undefined) error.details = details;
  return { ok: false, error };
}

function hasOwn(object: object, key: string): boolean {
  return Object.prototype.hasOwnProperty.call(object, key);
}

/**
 * The most frequent frame, checked by hand: the same rules as its schema
 * (`clientFrameSchemas.publish`), without building a parse context per message. Returns
 * undefined for any frame the schema would refuse, so the schema reports why.
 */
function checkPublish(object: Record<string, unknown>, ref: string | undefined): PublishFrame | undefined {
  const { room, data, cid } = object;
  if (!isRoomName(room) || data === undefined) return undefined;
  if (cid !== undefined && (typeof cid !== 'string' || cid.length > MAX_CID_LENGTH)) return undefined;
  const frame: PublishFrame = { type: 'publish', room, data };
  if (cid !== undefined) frame.cid = cid;
  if (ref !== undefined) frame.ref = ref;
  return frame;
}

/**
 * Decodes one client frame per docs/protocol.md. Never throws: every refusal maps to a
 * documented code (`bad_request` or `unknown_type`), with the frame's `ref` when it
 * had a valid one.
 */
export function decodeClientFrame(data: string | Uint8Array, isBinary = false): DecodeResult {
  if (isBinary) return fail('bad_request', 'binary frames are not supported; send JSON text');
  let text: string;
  if (typeof data === 'string') {
    text = data;
  } else {
    try {
      text = textDecoder.decode(data);
    } catch {
      return fail('bad_request', 'frame is not valid UTF-8');
    }
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return fail('bad_request', 'frame is not valid JSON');
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return fail('bad_request', 'frame must be a JSON object');
  }
  const object = value as Record<string, unknown>;
  let ref: string | undefined;
  if (hasOwn(object, 'ref')) {
    const candidate = object.ref;
    if (typeof candidate !== 'string' || candidate.length > MAX_REF_LENGTH) {
      return fail('bad_request', `ref must be a string of at most ${MAX_REF_LENGTH} characters`);
    }
    ref = candidate;
  }
  const type = object.type;
  if (typeof type !== 'string') return fail('bad_request', 'frame needs a string field "type"', ref);
  if (!hasOwn(clientFrameSchemas, type)) return fail('unknown_type', `unknown frame type "${type.slice(0, 64)}"`, ref);
  if (type === 'publish') {
    const publish = checkPublish(object, ref);
    if (publish) return { ok: true, frame: publish };
    // Invalid: the schema below names what is wrong, with the same messages as for every frame.
  }
  const parsed = clientFrameSchemas[type as ClientFrameType].safeParse(object);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((issue) => ({ path: issue.path.map(String).join('.'), message: issue.message }));
    const first = issues[0];
    const message = first ? `invalid ${type} frame: ${first.path || 'frame'}: ${first.message}` : `invalid ${type} frame`;
    return fail('bad_request', message, ref, { issues });
  }
  return { ok: true, frame: parsed.data as ClientFrame };
}
