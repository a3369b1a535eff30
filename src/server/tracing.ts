/**
 * OpenTelemetry spans (`[telemetry] tracing_enabled`, `tracing_endpoint`): `verity.write` and
 * `verity.query` around client calls, and, inside a write on the leader, `verity.consensus.prepare`
 * (proposed until a quorum has it durable: committed) and `verity.consensus.commit` (committed
 * until applied and decided). Exported over OTLP/HTTP to the configured collector.
 *
 * Free when off: the SDK is not even loaded, `tracer()` is undefined and callers create no spans.
 */

import { trace, context, SpanStatusCode, type Span, type Tracer } from "@opentelemetry/api";
import type { NodeSDK } from "@opentelemetry/sdk-node";

/** How often finished spans are sent to the collector. */
export const TRACE_EXPORT_DELAY_MS = 1_000;
/** Finished spans waiting for export, at most (more are dropped, as the SDK does). */
export const TRACE_QUEUE_SPANS_MAX = 8_192;

let active: { sdk: NodeSDK; tracer: Tracer } | undefined;

/** The OTLP/HTTP traces URL for a collector URL: its `/v1/traces` path unless the URL names a path. */
export function tracesUrl(endpoint: string): string {
  const url = new URL(endpoint);
  if (url.pathname === "/" || url.pathname === "") url.pathname = "/v1/traces";
  return url.toString();
}

/** Starts exporting spans to `endpoint` (one SDK per process). */
export async function startTracing(endpoint: string, attributes: Record<string, string | number>): Promise<void> {
  if (active !== undefined) return;
  const [{ NodeSDK }, { BatchSpanProcessor }, { OTLPTraceExporter }, { resourceFromAttributes }] = await Promise.all([
    import("@opentelemetry/sdk-node"),
    import("@opentelemetry/sdk-trace-base"),
    import("@opentelemetry/exporter-trace-otlp-http"),
    import("@opentelemetry/resources"),
  ]);
  const processor = new BatchSpanProcessor(new OTLPTraceExporter({ url: tracesUrl(endpoint) }), {
    scheduledDelayMillis: TRACE_EXPORT_DELAY_MS,
    maxQueueSize: TRACE_QUEUE_SPANS_MAX,
  });
  const sdk = new NodeSDK({
    resource: resourceFromAttributes({ "service.name": "verity-server", ...attributes }),
    spanProcessors: [processor],
    // Only our own spans: no automatic instrumentation of every library.
    instrumentations: [],
  });
  sdk.start();
  active = { sdk, tracer: trace.getTracer("veritydb") };
}

/** Sends what is buffered and stops (on shutdown). */
export async function stopTracing(): Promise<void> {
  const a = active;
  active = undefined;
  await a?.sdk.shutdown();
}

/** The tracer when tracing is on; undefined when it is off. */
export function tracer(): Tracer | undefined {
  return active?.tracer;
}

/** Runs `body` in a span named `name` when tracing is on (just `body` when off); records failures. */
export async function traced<T>(name: string, attributes: Record<string, string | number>, body: (span: Span | undefined) => Promise<T>): Promise<T> {
  const t = active?.tracer;
  if (t === undefined) return body(undefined);
  return t.startActiveSpan(name, { attributes }, async (span) => {
    try {
      const result = await body(span);
      span.setStatus({ code: SpanStatusCode.OK });
      return result;
    } catch (e) {
      span.setStatus({ code: SpanStatusCode.ERROR, message: e instanceof Error ? e.message : String(e) });
      throw e;
    } finally {
      span.end();
    }
  });
}

/** Starts a child span of the active one (undefined when tracing is off). */
export function childSpan(name: string, attributes: Record<string, string | number>): Span | undefined {
  return active?.tracer.startSpan(name, { attributes }, context.active());
}
