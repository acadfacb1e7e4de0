/**
 * An event handler the socket calls. Declared through a method so that its parameter is
 * checked both ways: the DOM's, React Native's and `ws`'s handler types (each with its
 * own event class) all fit it.
 */
export type SocketHandler<E> = {
  /** Called with the socket's event. */
  handle(event: E): void;
}['handle'];

/**
 * The part of a WebSocket the client uses: the browser's, React Native's, Node 22's
 * global one, or the `ws` package's all have this shape.
 */
export interface WebSocketLike {
  /** 0 connecting, 1 open, 2 closing, 3 closed. */
  readonly readyState: number;
  /** Sends one text frame. */
  send(data: string): void;
  /** Starts the closing handshake. */
  close(code?: number, reason?: string): void;
  /** Set by the client: the connection opened. */
  onopen: SocketHandler<unknown> | null;
  /** Set by the client: a frame arrived; `data` is a string for text frames. */
  onmessage: SocketHandler<{ data: unknown }> | null;
  /** Set by the client: the connection closed, with the close code and reason. */
  onclose: SocketHandler<{ code: number; reason: string }> | null;
  /** Set by the client: the connection failed; a `close` follows. */
  onerror: SocketHandler<unknown> | null;
}

/** A WebSocket constructor, such as `globalThis.WebSocket` or the default export of `ws`. */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;
