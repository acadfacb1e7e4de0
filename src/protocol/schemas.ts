import { z } from 'zod';
import { MAX_CID_LENGTH, MAX_EPOCH_LENGTH, MAX_REF_LENGTH, MAX_ROOM_LENGTH, isRoomName } from './limits.js';

/**
 * A string whose JavaScript length (UTF-16 code units, as docs/protocol.md measures) is within
 * bounds; zod's own length checks count code points instead.
 */
function jsString(min: number, max: number, what: string) {
  return z.string().refine((value) => value.length >= min && value.length <= max, {
    message: `${what} must be ${min === 0 ? 'at most' : `${min} to`} ${max} characters`,
  });
}

/** A room name: 1 to 256 characters, with no unpaired surrogate (see {@link isRoomName}). */
export const roomSchema = jsString(1, MAX_ROOM_LENGTH, 'room').refine(isRoomName, { message: 'room must not hold an unpaired surrogate' });

/** A frame's `ref`: a string of at most 64 characters. */
export const refSchema = jsString(0, MAX_REF_LENGTH, 'ref');

function isSeq(value: unknown): boolean {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}

/**
 * `resume.rooms`: checked in place rather than rebuilt, because rebuilding an object from
 * client keys would turn a room named `__proto__` into a prototype.
 */
const roomSeqsSchema = z.custom<Record<string, number>>(
  (value) => {
    if (typeof value !== 'object' || value === null || Array.isArray(value)) return false;
    for (const [room, seq] of Object.entries(value)) {
      if (!isRoomName(room) || !isSeq(seq)) return false;
    }
    return true;
  },
  { message: `rooms must map room names (1 to ${MAX_ROOM_LENGTH} characters, no unpaired surrogate) to seqs (whole numbers >= 0)` },
);

/** Schemas of every client frame, by `type`. Unknown extra fields are ignored. */
export const clientFrameSchemas = {
  /** The schema of {@link JoinFrame}. */
  join: z.object({ type: z.literal('join'), room: roomSchema, ref: refSchema.optional() }),
  /** The schema of {@link LeaveFrame}. */
  leave: z.object({ type: z.literal('leave'), room: roomSchema, ref: refSchema.optional() }),
  /** The schema of {@link PublishFrame}. */
  publish: z.object({
    type: z.literal('publish'),
    room: roomSchema,
    // Present but possibly null: `data` is any JSON, and a missing one is a bad request.
    data: z.custom<unknown>((value) => value !== undefined, { message: 'data is required' }),
    cid: jsString(0, MAX_CID_LENGTH, 'cid').optional(),
    ref: refSchema.optional(),
  }),
  /** The schema of {@link ResumeFrame}. */
  resume: z.object({
    type: z.literal('resume'),
    rooms: roomSeqsSchema,
    epoch: jsString(0, MAX_EPOCH_LENGTH, 'epoch').optional(),
    ref: refSchema.optional(),
  }),
  /** The schema of {@link PingFrame}. */
  ping: z.object({ type: z.literal('ping'), ref: refSchema.optional() }),
} as const;

/** The `type`s a client may send. */
export type ClientFrameType = keyof typeof clientFrameSchemas;
