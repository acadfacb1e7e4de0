/**
 * Who is where, shared by the servers and the load generator so every server computes
 * the same rooms: connection `i` belongs to user `u<i>`, who participates in room
 * `r<floor(i / roomSize)>` and in no other.
 */
export interface Topology {
  /** Connections (and users: one connection each). */
  connections: number;
  /** Users per room; the last room may be smaller. */
  roomSize: number;
}

export function userName(index: number): string {
  return `u${index}`;
}

export function roomName(roomIndex: number): string {
  return `r${roomIndex}`;
}

export function roomCount(topology: Topology): number {
  return Math.ceil(topology.connections / topology.roomSize);
}

/** The user's index, or -1 for a name this topology did not hand out. */
export function userIndex(user: string, topology: Topology): number {
  if (!user.startsWith('u')) return -1;
  const index = Number(user.slice(1));
  return Number.isInteger(index) && index >= 0 && index < topology.connections ? index : -1;
}

/** The one room of a user, or undefined for an unknown user. */
export function roomOf(user: string, topology: Topology): string | undefined {
  const index = userIndex(user, topology);
  return index === -1 ? undefined : roomName(Math.floor(index / topology.roomSize));
}

/** Participants of a room, in index order. */
export function membersOf(room: string, topology: Topology): string[] {
  const roomIndex = Number(room.slice(1));
  if (!room.startsWith('r') || !Number.isInteger(roomIndex) || roomIndex < 0) return [];
  const out: string[] = [];
  const end = Math.min((roomIndex + 1) * topology.roomSize, topology.connections);
  for (let i = roomIndex * topology.roomSize; i < end; i++) out.push(userName(i));
  return out;
}

/** The `user` query parameter of a request target such as `/?user=u7`. */
export function userFromUrl(url: string): string | undefined {
  return new URL(url, 'http://bench.invalid').searchParams.get('user') ?? undefined;
}

/** Reads a topology passed to a child process as its first argument. */
export function topologyFromArgv(argv: readonly string[]): Topology {
  const raw = argv[2];
  if (raw === undefined) throw new Error('expected the topology as the first argument (JSON)');
  const value = JSON.parse(raw) as Partial<Topology>;
  if (!Number.isInteger(value.connections) || !Number.isInteger(value.roomSize)) throw new Error(`bad topology ${raw}`);
  return { connections: value.connections as number, roomSize: value.roomSize as number };
}
