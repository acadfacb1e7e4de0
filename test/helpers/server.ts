import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { SignJWT } from 'jose';
import { RoomManager, type MembershipLoader, type RoomManagerOptions } from '../../src/index.js';
import { jwtAuthenticator } from '../../src/auth/jwt.js';
import { attachWebSocket, type WebSocketAdapter, type WebSocketAdapterOptions } from '../../src/transports/ws.js';
import { TestClient } from './client.js';

export const TEST_SECRET = 'roomwire-test-secret';

/** Signs an HS256 token for `sub` with the test secret. */
export async function tokenFor(sub: string, options: { expiresIn?: string | number; secret?: string } = {}): Promise<string> {
  const jwt = new SignJWT({}).setProtectedHeader({ alg: 'HS256' }).setSubject(sub).setIssuedAt();
  if (options.expiresIn !== undefined) jwt.setExpirationTime(options.expiresIn);
  return jwt.sign(new TextEncoder().encode(options.secret ?? TEST_SECRET));
}

/** A client of `user` (a JWT from {@link tokenFor}), once its `welcome` arrived. */
export async function connectAs(url: string, user: string): Promise<TestClient> {
  return TestClient.connect(url, await tokenFor(user));
}

/**
 * An in-memory membership table the test mutates: room → participant ids. roomsOf and
 * membersOf read it, as an application's database would be read.
 */
export class MembershipTable implements MembershipLoader {
  readonly rooms = new Map<string, Set<string>>();
  calls = { roomsOf: 0, membersOf: 0 };
  canJoinRooms = new Set<string>();

  constructor(initial: Record<string, string[]> = {}) {
    for (const [room, users] of Object.entries(initial)) this.rooms.set(room, new Set(users));
  }

  roomsOf(user: { id: string }): string[] {
    this.calls.roomsOf++;
    return [...this.rooms].filter(([, users]) => users.has(user.id)).map(([room]) => room);
  }

  membersOf(room: string): string[] {
    this.calls.membersOf++;
    return [...(this.rooms.get(room) ?? [])];
  }

  canJoin(_user: { id: string }, room: string): boolean {
    return this.canJoinRooms.has(room);
  }

  add(room: string, user: string): void {
    let users = this.rooms.get(room);
    if (!users) this.rooms.set(room, (users = new Set()));
    users.add(user);
  }

  remove(room: string, user: string): void {
    this.rooms.get(room)?.delete(user);
  }
}

export interface TestServer {
  manager: RoomManager;
  server: Server;
  adapter: WebSocketAdapter;
  port: number;
  url: string;
  close(): Promise<void>;
}

const leftovers = new Set<TestServer>();

/** Starts a real node:http server with the ws adapter on port 0. Tear down with closeAll(). */
export async function startServer(
  options: Partial<RoomManagerOptions> & { membership: MembershipLoader },
  adapterOptions: { path?: string; allowedOrigins?: WebSocketAdapterOptions['allowedOrigins']; heartbeat?: boolean; perMessageDeflate?: boolean } = {},
): Promise<TestServer> {
  const manager = new RoomManager({ authenticate: jwtAuthenticator({ secret: TEST_SECRET }), ...options });
  const server = createServer((_req, res) => res.writeHead(404).end());
  const path = adapterOptions.path ?? '/ws';
  const adapter = attachWebSocket(manager, { server, ...adapterOptions, path });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  const test: TestServer = {
    manager,
    server,
    adapter,
    port,
    url: `ws://127.0.0.1:${port}${path}`,
    async close() {
      leftovers.delete(test);
      await manager.close();
      await adapter.close();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
  leftovers.add(test);
  return test;
}

/** Closes every server a test started and did not close. */
export async function closeAll(): Promise<void> {
  await Promise.all([...leftovers].map((server) => server.close()));
}
