/**
 * An incremental Server-Sent Events parser over text chunks (NERVE-4114, by the rules of
 * NERVE-4111): lines end in "\r\n", "\n" or "\r" (a "\r\n" may be split over two chunks),
 * ":" lines are comments, a blank line dispatches an event that has data, and an
 * unfinished event at the end of the stream is dropped. Uses no Node-only API.
 */

/** One dispatched event. `id` is the event's own `id:` line, if it had one. */
export interface SseEvent {
  event: string;
  data: string;
  id: string | undefined;
}

export class SseParser {
  private buf = "";
  private event = "";
  private data: string[] = [];
  private id: string | undefined = undefined;
  /** The last `id:` seen, carried over events without one. */
  lastEventId: string | undefined = undefined;

  /** The events completed by `text`, in order. */
  feed(text: string): SseEvent[] {
    const buf = this.buf + text;
    const out: SseEvent[] = [];
    let pos = 0;
    while (pos < buf.length) {
      const nl = buf.indexOf("\n", pos);
      const cr = buf.indexOf("\r", pos);
      let stop: number;
      let next: number;
      if (cr !== -1 && (nl === -1 || cr < nl)) {
        if (cr + 1 === buf.length) break; // a "\r\n" may be split: wait for more
        stop = cr;
        next = buf[cr + 1] === "\n" ? cr + 2 : cr + 1;
      } else if (nl !== -1) {
        stop = nl;
        next = nl + 1;
      } else {
        break;
      }
      const ev = this.line(buf.slice(pos, stop));
      if (ev !== undefined) out.push(ev);
      pos = next;
    }
    this.buf = buf.slice(pos);
    return out;
  }

  private line(line: string): SseEvent | undefined {
    if (line === "") return this.dispatch();
    if (line.startsWith(":")) return undefined;
    const colon = line.indexOf(":");
    const name = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (name === "data") this.data.push(value);
    else if (name === "event") this.event = value;
    else if (name === "id" && !value.includes("\0")) {
      this.id = value;
      this.lastEventId = value;
    }
    return undefined;
  }

  private dispatch(): SseEvent | undefined {
    const { data, event, id } = this;
    this.data = [];
    this.event = "";
    this.id = undefined;
    if (data.length === 0) return undefined;
    return { event: event || "message", data: data.join("\n"), id };
  }
}
