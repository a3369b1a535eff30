/**
 * `verity-admin cluster ping`: for each peer address, can we reach it (TCP), does the TLS
 * handshake succeed against our CA (and whose certificate is it), and how long does that take.
 * Every failure says why: refused, timeout, unreachable, or the certificate problem.
 */

import * as net from "node:net";
import * as tls from "node:tls";
import { readFileSync } from "node:fs";
import type { ClientTlsFiles } from "./admin-client.js";
import { commonName } from "../server/identity.js";
import { parseHostPort } from "../server/setting-values.js";

export const PING_TIMEOUT_MS = 3000;

export interface PingResult {
  address: string;
  ok: boolean;
  /** Milliseconds to connect (and finish the TLS handshake, with TLS). */
  rttMs: number | undefined;
  /** The server certificate's identity, with TLS. */
  identity: string | undefined;
  /** Why it failed: "refused", "timeout", "unreachable", "certificate: ...", or the error. */
  reason: string | undefined;
}

function classify(e: NodeJS.ErrnoException & { code?: string }): string {
  switch (e.code) {
    case "ECONNREFUSED":
      return "refused (nothing listens there: is the node running, is the port right?)";
    case "ETIMEDOUT":
      return "timeout";
    case "EHOSTUNREACH":
    case "ENETUNREACH":
    case "ENOTFOUND":
    case "EAI_AGAIN":
      return `unreachable (${e.code})`;
    default:
      if (typeof e.code === "string" && /CERT|SELF_SIGNED|UNABLE_TO_VERIFY|ERR_TLS|ALERT/.test(e.code)) return `certificate: ${e.code} (${e.message})`;
      return e.message;
  }
}

export function ping(address: string, files: ClientTlsFiles | undefined): Promise<PingResult> {
  const parsed = parseHostPort(address);
  if (!parsed.ok) return Promise.resolve({ address, ok: false, rttMs: undefined, identity: undefined, reason: `not host:port: ${parsed.reason}` });
  const { host, port } = parsed.value;
  const started = performance.now();
  return new Promise((resolve) => {
    let done = false;
    const finish = (r: Omit<PingResult, "address">, socket: net.Socket): void => {
      if (done) return;
      done = true;
      socket.destroy();
      resolve({ address, ...r });
    };
    const socket: net.Socket = files === undefined
      ? net.connect({ host, port })
      : tls.connect({
          host, port, ca: readFileSync(files.ca), cert: readFileSync(files.cert), key: readFileSync(files.key),
          servername: net.isIP(host) === 0 ? host : "localhost", ALPNProtocols: ["h2"],
        });
    socket.setTimeout(PING_TIMEOUT_MS, () => finish({ ok: false, rttMs: undefined, identity: undefined, reason: "timeout" }, socket));
    socket.once("error", (e) => finish({ ok: false, rttMs: undefined, identity: undefined, reason: classify(e) }, socket));
    socket.once(files === undefined ? "connect" : "secureConnect", () => {
      const identity = files === undefined ? undefined : commonName((socket as tls.TLSSocket).getPeerCertificate());
      finish({ ok: true, rttMs: performance.now() - started, identity, reason: undefined }, socket);
    });
  });
}
