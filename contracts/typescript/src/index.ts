/**
 * @orchestratord/client: the client contract's canonical TypeScript surface
 * (specs/88_clients.md, NERVE-4113..4116) over orchestratord's /v1/llm routes.
 *
 *   const nrv = createClient({ baseUrl: "http://127.0.0.1:8787", token });
 *   const caps = await nrv.llm.capabilities();
 *   const job = await nrv.llm.enqueue({ model: caps.models[0]!.id, prompt: "..." });
 *   for await (const evt of nrv.llm.stream(job.id)) { ... }
 *
 * Runs in a browser as in Node 20: only fetch, ReadableStream, TextDecoder, TextEncoder,
 * Blob and btoa are used. Nothing is retried and nothing is added to a request that the
 * caller did not give (no prompt text, no model choice, no invented client_token).
 */

import { SseParser } from "./sse.js";

export { SseParser } from "./sse.js";
export type { SseEvent } from "./sse.js";

export interface LlmCapabilities {
  models: Array<{ id: string; family: string; context_tokens: number; features: string[] }>;
  server_version: string;
  limits: Record<string, number>;
}

export interface EnqueueOptions {
  /** Opaque model id exactly as advertised by capabilities(). */
  model: string;
  /** Entirely user-authored; sent byte for byte. */
  prompt: string;
  /** Optional JSON Schema the output must satisfy. */
  response_contract?: object;
  /** Sidecar files by name: sent base64 encoded (a string is sent as its UTF-8). */
  attachments?: Record<string, Blob | Uint8Array | string>;
  /** Opaque, userland-only; stored and returned, not part of the prompt. */
  metadata?: Record<string, unknown>;
  /** The Run to put the job in (default: the server keeps one for the tenant). */
  run_id?: string;
  /** The job's idempotency key; without one the server derives it, never at random. */
  client_token?: string;
}

export interface Job {
  id: string;
  model: string;
  enqueued_at: string;
}

export type StreamEvent =
  | { type: "token"; text: string }
  | { type: "log"; message: string }
  | { type: "narration"; text: string }
  | { type: "error"; code: string; message: string; data?: unknown }
  | { type: "done" };

export type ErrorName =
  | "ERR_INVALID_MODEL"
  | "ERR_CONTEXT_BUDGET"
  | "ERR_STREAM_DISCONNECTED"
  | "ERR_SERVER";

/** The contract's error names by the server's error code (NERVE-4115). */
const NAMES: Record<string, ErrorName> = {
  INVALID_MODEL: "ERR_INVALID_MODEL",
  CONTEXT_BUDGET: "ERR_CONTEXT_BUDGET",
};

/** Every error this package throws (NERVE-4115). */
export class NrvError extends Error {
  /** The contract's name of the error. */
  readonly code: ErrorName;
  /** The server's own code (e.g. "NOT_FOUND"); undefined for a client-side error. */
  readonly serverCode: string | undefined;
  /** The HTTP status of the refusal; undefined for a client-side error. */
  readonly status: number | undefined;
  /** True when trying again may succeed (the server's `retriable`; always true for a
   *  disconnected stream: read it again from `lastEventId`). */
  readonly retriable: boolean;
  /** The server's `data`, e.g. `{ field: "model" }`. */
  readonly data: unknown;
  /** ERR_STREAM_DISCONNECTED: the job and the id of the last event received. */
  readonly jobId: string | undefined;
  readonly lastEventId: number | undefined;

  constructor(code: ErrorName, message: string, extra: {
    serverCode?: string; status?: number; retriable?: boolean; data?: unknown;
    jobId?: string; lastEventId?: number | undefined; cause?: unknown;
  } = {}) {
    super(message, extra.cause === undefined ? undefined : { cause: extra.cause });
    this.name = "NrvError";
    this.code = code;
    this.serverCode = extra.serverCode;
    this.status = extra.status;
    this.retriable = extra.retriable ?? false;
    this.data = extra.data;
    this.jobId = extra.jobId;
    this.lastEventId = extra.lastEventId;
  }
}

export interface ClientOptions {
  /** e.g. "http://127.0.0.1:8787" (no trailing path). */
  baseUrl: string;
  /** Bearer token; omit for a server without authentication. */
  token?: string;
  /** The fetch to use (default: the global fetch). */
  fetch?: typeof fetch;
}

export interface StreamOptions {
  /** Resume after this event id (the `lastEventId` of ERR_STREAM_DISCONNECTED). */
  lastEventId?: number;
  /** Aborts the request. */
  signal?: AbortSignal;
}

export interface LlmClient {
  capabilities(): Promise<LlmCapabilities>;
  enqueue(opts: EnqueueOptions): Promise<Job>;
  stream(jobId: string, opts?: StreamOptions): AsyncIterable<StreamEvent>;
  cancel(jobId: string): Promise<void>;
}

export interface Client {
  llm: LlmClient;
}

const EVENTS = new Set(["token", "log", "narration", "error", "done"]);
const MAX_MESSAGE_CHARS = 2000;

async function errorOf(res: Response): Promise<NrvError> {
  const text = await res.text();
  let env: { code?: unknown; message?: unknown; retriable?: unknown; data?: unknown } = {};
  try {
    env = JSON.parse(text) as typeof env;
  } catch {
    // not the envelope (a proxy's page, say): kept as the message below
  }
  if (typeof env.code !== "string" || typeof env.message !== "string") {
    return new NrvError("ERR_SERVER", `HTTP ${res.status}: ${text.slice(0, MAX_MESSAGE_CHARS)}`,
                        { status: res.status });
  }
  return new NrvError(NAMES[env.code] ?? "ERR_SERVER", env.message, {
    serverCode: env.code, status: res.status, retriable: env.retriable === true,
    data: env.data,
  });
}

async function base64(value: Blob | Uint8Array | string): Promise<string> {
  const bytes = typeof value === "string" ? new TextEncoder().encode(value)
    : value instanceof Uint8Array ? value : new Uint8Array(await value.arrayBuffer());
  let bin = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(bin);
}

function disconnected(jobId: string, last: number | undefined, reason: string,
                      cause?: unknown): NrvError {
  return new NrvError("ERR_STREAM_DISCONNECTED",
                      `the stream of job ${jobId} ended without done or error after event id `
                      + `${last ?? "none"}: ${reason}`,
                      { retriable: true, jobId, lastEventId: last, cause });
}

/** A client of one orchestratord (NERVE-4113). */
export function createClient(options: ClientOptions): Client {
  const base = options.baseUrl.replace(/\/+$/, "");
  const doFetch: typeof fetch = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
  const auth: Record<string, string> = options.token
    ? { authorization: `Bearer ${options.token}` } : {};
  const job = (id: string): string => `${base}/v1/llm/jobs/${encodeURIComponent(id)}`;

  async function call<T>(method: string, url: string, body?: unknown): Promise<T> {
    const headers: Record<string, string> = { ...auth, accept: "application/json" };
    if (body !== undefined) headers["content-type"] = "application/json";
    const res = await doFetch(url, {
      method, headers, ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    if (!res.ok) throw await errorOf(res);
    return (await res.json()) as T;
  }

  async function* stream(jobId: string, opts: StreamOptions = {}): AsyncGenerator<StreamEvent> {
    const headers: Record<string, string> = { ...auth, accept: "text/event-stream" };
    if (opts.lastEventId !== undefined) headers["last-event-id"] = String(opts.lastEventId);
    let last = opts.lastEventId;
    let res: Response;
    try {
      res = await doFetch(`${job(jobId)}/events`, {
        headers, cache: "no-store", ...(opts.signal ? { signal: opts.signal } : {}),
      });
    } catch (err) {
      throw disconnected(jobId, last, String(err), err);
    }
    if (!res.ok) throw await errorOf(res);
    if (res.status === 204 || res.body === null) return; // already past lastEventId
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    const parser = new SseParser();
    try {
      for (;;) {
        let chunk: ReadableStreamReadResult<Uint8Array>;
        try {
          chunk = await reader.read();
        } catch (err) {
          throw disconnected(jobId, last, String(err), err);
        }
        if (chunk.done) break;
        for (const ev of parser.feed(decoder.decode(chunk.value, { stream: true }))) {
          if (!EVENTS.has(ev.event)) continue; // an event newer than this package
          if (ev.id !== undefined && ev.event !== "narration") last = Number(ev.id);
          yield JSON.parse(ev.data) as StreamEvent;
          if (ev.event === "done" || ev.event === "error") return;
        }
      }
      throw disconnected(jobId, last, "the server closed the stream");
    } finally {
      reader.cancel().catch(() => undefined); // a loop left early frees the connection
    }
  }

  return {
    llm: {
      capabilities: () => call<LlmCapabilities>("GET", `${base}/v1/llm/capabilities`),
      async enqueue(opts: EnqueueOptions): Promise<Job> {
        const { attachments, ...rest } = opts;
        const body: Record<string, unknown> = { ...rest };
        if (attachments !== undefined) {
          const encoded: Record<string, string> = {};
          for (const [name, value] of Object.entries(attachments)) {
            encoded[name] = await base64(value);
          }
          body["attachments"] = encoded;
        }
        return call<Job>("POST", `${base}/v1/llm/jobs`, body);
      },
      stream,
      async cancel(jobId: string): Promise<void> {
        await call<unknown>("POST", `${job(jobId)}/cancel`);
      },
    },
  };
}
