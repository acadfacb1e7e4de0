/** A map of event names to listener signatures, as {@link Emitter} takes it. */
export type ListenerMap<T> = { [K in keyof T]: (...args: never[]) => void };

/**
 * The smallest typed event emitter: the client ships no dependency, so no eventemitter3.
 * Like a DOM `EventTarget`, a listener that throws does not stop the others or the
 * client; its error is rethrown on a later tick so it still surfaces.
 */
export class Emitter<T extends ListenerMap<T>> {
  private readonly listeners: { [K in keyof T]?: Set<T[K]> } = {};

  /** Adds a listener; returns the function that removes it. */
  on<K extends keyof T>(event: K, listener: T[K]): () => void {
    const set = (this.listeners[event] ??= new Set());
    set.add(listener);
    return () => {
      set.delete(listener);
    };
  }

  /** Calls every listener of `event`. */
  emit<K extends keyof T>(event: K, ...args: Parameters<T[K]>): void {
    const set = this.listeners[event];
    if (!set) return;
    // A copy, so a listener that adds listeners does not make this loop run forever.
    for (const listener of [...set]) {
      try {
        (listener as (...values: Parameters<T[K]>) => void)(...args);
      } catch (error) {
        setTimeout(() => {
          throw error;
        }, 0);
      }
    }
  }
}
