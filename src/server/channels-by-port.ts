/**
 * The transfers of a shared port, by their client's port: looked up once per datagram, and a
 * port number is a cheaper key than an address. Clients on different hosts may share a port,
 * hence a short list per port, which the socket searches by address in its own terms (a string
 * on Bun's sockets, an integer or bytes on the epoll loop's).
 */
export class ChannelsByPort<C> {
  private readonly byPort = new Map<number, C[]>();
  private count = 0;

  get size(): number {
    return this.count;
  }

  /** the channels of clients on `port`, or undefined when there is none */
  at(port: number): readonly C[] | undefined {
    return this.byPort.get(port);
  }

  add(port: number, channel: C): void {
    const list = this.byPort.get(port);
    if (list) list.push(channel);
    else this.byPort.set(port, [channel]);
    this.count++;
  }

  /** false when `channel` was not here (detached already) */
  remove(port: number, channel: C): boolean {
    const list = this.byPort.get(port);
    const at = list ? list.indexOf(channel) : -1;
    if (at < 0) return false;
    this.count--;
    if (list!.length === 1) this.byPort.delete(port);
    else list!.splice(at, 1);
    return true;
  }

  /** every channel, as a copy (closing one removes it) */
  all(): C[] {
    return [...this.byPort.values()].flat();
  }
}
