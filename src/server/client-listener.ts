/**
 * The client port (7000) serves two protocols, as the operations guide's curl lines need:
 * gRPC (HTTP/2) and HTTP/1.1 (`/health/live`, `/health/ready`, `/status`).
 *
 * With TLS, this listener terminates TLS itself with ALPN `h2` and `http/1.1` and dispatches on the
 * negotiated protocol: `h2` connections go to the gRPC server through grpc-js's connection
 * injector, everything else to the HTTP handler. Without TLS (loopback only), it peeks at the first
 * bytes: the HTTP/2 connection preface means gRPC, anything else HTTP/1.1.
 *
 * Client certificates: the TLS handshake asks for one and checks it against the CA. Only the
 * health endpoints may be reached without one (a load balancer's probe has none); a gRPC
 * connection, or any other HTTP path, without a valid certificate is closed before it reaches a
 * handler. The certificate's subject CN is the caller's identity, looked up by `identityOf`.
 */

import * as grpc from "@grpc/grpc-js";
import * as http from "node:http";
import * as net from "node:net";
import * as tls from "node:tls";
import { Duplex } from "node:stream";
import { commonName } from "./identity.js";
import { listenOn } from "./listen.js";

const HTTP2_PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
/** Bytes a plaintext connection may send before we decide its protocol (the HTTP/2 preface is 24). */
const SNIFF_BYTES = HTTP2_PREFACE.length;
/** A connection that has not said enough to be classified within this time is closed. */
export const CLIENT_SNIFF_TIMEOUT_MS = 10_000;
/** Connections open at once on the client port at most; more are refused. */
export const CLIENT_CONNECTIONS_MAX = 10_000;

export interface ClientTls {
  cert: Buffer;
  key: Buffer;
  ca: Buffer;
  /** When false, gRPC without a client certificate is allowed (identity ""). */
  requireClientCert: boolean;
}

/** What the HTTP handler learns about the caller. */
export interface HttpCaller {
  /** The client certificate's subject CN, or undefined without a valid certificate. */
  identity: string | undefined;
}

export interface ClientListenerOptions {
  /** host:port; port 0 picks one. */
  listen: string;
  tls?: ClientTls;
  grpcServer: grpc.Server;
  /** Serves HTTP/1.1 requests; called only for paths the caller may reach (see `isOpenPath`). */
  http: (req: http.IncomingMessage, res: http.ServerResponse, caller: HttpCaller) => void;
  /** Called for every connection or request refused for want of a valid client certificate. */
  onAuthFailure?: () => void;
}

/** Paths served without a client certificate. */
export function isOpenPath(url: string | undefined): boolean {
  const path = (url ?? "").split("?")[0];
  return path === "/health/live" || path === "/health/ready";
}

function peerKey(address: string | undefined, port: number | undefined): string {
  return `${address ?? "?"}:${port ?? 0}`;
}

/** A Duplex over `socket` that first yields `head` (bytes already read), then the socket's data. */
function replaying(socket: net.Socket, head: Buffer): Duplex {
  const duplex = new Duplex({
    read() {
      socket.resume();
    },
    write(chunk: Buffer, _encoding, callback) {
      socket.write(chunk, callback);
    },
    final(callback) {
      socket.end(callback);
    },
    destroy(error, callback) {
      socket.destroy(error ?? undefined);
      callback(error);
    },
  });
  duplex.push(head);
  socket.on("data", (chunk: Buffer) => {
    if (!duplex.push(chunk)) socket.pause();
  });
  socket.on("end", () => duplex.push(null));
  socket.on("close", () => duplex.destroy());
  // grpc-js names the peer from these (call.getPeer()).
  Object.defineProperties(duplex, {
    remoteAddress: { get: () => socket.remoteAddress },
    remotePort: { get: () => socket.remotePort },
    remoteFamily: { get: () => socket.remoteFamily },
    localAddress: { get: () => socket.localAddress },
    localPort: { get: () => socket.localPort },
  });
  socket.resume();
  return duplex;
}

export class ClientListener {
  private readonly server: net.Server;
  private readonly httpServer: http.Server;
  private readonly injector: grpc.ConnectionInjector;
  /** Performs TLS handshakes on connections this listener accepted (never listens itself). */
  private readonly tlsServer: tls.Server | undefined;
  /** Identity (certificate CN) of each open TLS connection, by remote address:port. */
  private readonly identities = new Map<string, string>();
  private readonly sockets = new Set<net.Socket>();
  private boundAddress = "";

  constructor(private readonly options: ClientListenerOptions) {
    // TLS is terminated here, so gRPC sees an already-decrypted stream.
    this.injector = options.grpcServer.createConnectionInjector(grpc.ServerCredentials.createInsecure());
    this.httpServer = http.createServer((req, res) => this.onHttp(req, res));
    const tlsOptions = options.tls;
    this.tlsServer = tlsOptions === undefined
      ? undefined
      : tls.createServer(
          {
            cert: tlsOptions.cert, key: tlsOptions.key, ca: tlsOptions.ca,
            requestCert: true,
            // Checked per protocol in onSecure: health probes may come without a certificate.
            rejectUnauthorized: false,
            ALPNProtocols: ["h2", "http/1.1"],
            // A connection that does not finish its handshake in time is closed.
            handshakeTimeout: CLIENT_SNIFF_TIMEOUT_MS,
          },
          (secure) => this.onSecure(secure, tlsOptions),
        );
    this.tlsServer?.on("tlsClientError", (_err, socket) => socket.destroy());
    this.server = net.createServer((socket) => this.onConnection(socket));
    this.server.maxConnections = CLIENT_CONNECTIONS_MAX;
  }

  get address(): string {
    return this.boundAddress;
  }

  async start(): Promise<void> {
    this.boundAddress = await listenOn(this.server, this.options.listen);
  }

  /**
   * The certificate identity of a gRPC caller, from `call.getPeer()`: "" when client certificates
   * are not required and none was given.
   */
  identityOf(peer: string): string | undefined {
    if (this.options.tls === undefined) return ""; // plaintext (loopback): no identities
    const key = peer.replace(/^ipv[46]:/, "").replace(/^\[(.*)\]:(\d+)$/, "$1:$2");
    return this.identities.get(key);
  }

  async stop(): Promise<void> {
    this.injector.destroy();
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private onConnection(socket: net.Socket): void {
    // Small gRPC answers must leave at once: HTTP/2 sets TCP_NODELAY on sockets it accepts itself,
    // but it never sees this one (we accept it, sniff or terminate TLS, then inject the stream).
    // Without it, Nagle holds an answer until the client's delayed ACK, up to 40 ms.
    socket.setNoDelay(true);
    this.sockets.add(socket);
    socket.once("close", () => this.sockets.delete(socket));
    socket.on("error", () => socket.destroy());
    if (this.options.tls === undefined) {
      // Until the first bytes decide the protocol; cleared then, so idle connections live on.
      socket.setTimeout(CLIENT_SNIFF_TIMEOUT_MS, () => socket.destroy());
      this.sniffPlaintext(socket);
    } else {
      // The TLS server's handshakeTimeout bounds the handshake. A timeout on this raw socket
      // would outlive it and cut idle connections (a long query) after the handshake.
      this.startTls(socket);
    }
  }

  private sniffPlaintext(socket: net.Socket): void {
    let seen = Buffer.alloc(0);
    const onData = (chunk: Buffer): void => {
      seen = Buffer.concat([seen, chunk]);
      const decided = seen.length >= SNIFF_BYTES || !HTTP2_PREFACE.subarray(0, seen.length).equals(seen);
      if (!decided) return;
      socket.off("data", onData);
      socket.pause();
      socket.unshift(seen);
      socket.setTimeout(0);
      const isGrpc = seen.subarray(0, SNIFF_BYTES).equals(HTTP2_PREFACE);
      const key = peerKey(socket.remoteAddress, socket.remotePort);
      this.identities.set(key, "");
      socket.once("close", () => this.identities.delete(key));
      if (isGrpc) {
        // Node's HTTP/2 reads a net.Socket's native handle directly and would miss the bytes we
        // already read; a JS-level stream that replays them first is read through JavaScript.
        socket.off("data", onData);
        this.injector.injectConnection(replaying(socket, socket.read() as Buffer | null ?? seen));
      } else {
        this.httpServer.emit("connection", socket);
        socket.resume();
      }
    };
    socket.on("data", onData);
  }

  /** Hands a raw connection to the TLS server; `onSecure` continues once the handshake is done. */
  private startTls(socket: net.Socket): void {
    this.tlsServer!.emit("connection", socket);
  }

  private onSecure(secure: tls.TLSSocket, options: ClientTls): void {
    secure.setTimeout(0);
    const cert = secure.authorized ? secure.getPeerCertificate() : undefined;
    const identity = commonName(cert);
    const key = peerKey(secure.remoteAddress, secure.remotePort);
    if (secure.alpnProtocol === "h2") {
      if (identity === undefined && options.requireClientCert) {
        this.options.onAuthFailure?.();
        secure.destroy(); // no valid client certificate: never reaches a gRPC handler
        return;
      }
      this.identities.set(key, identity ?? "");
      secure.once("close", () => this.identities.delete(key));
      this.injector.injectConnection(secure);
      return;
    }
    (secure as tls.TLSSocket & { verityIdentity?: string }).verityIdentity = identity;
    this.httpServer.emit("connection", secure);
  }

  private onHttp(req: http.IncomingMessage, res: http.ServerResponse): void {
    const socket = req.socket as net.Socket & { verityIdentity?: string; encrypted?: boolean };
    const identity = this.options.tls === undefined ? "" : socket.verityIdentity;
    if (identity === undefined && !isOpenPath(req.url)) {
      this.options.onAuthFailure?.();
      res.writeHead(401, { "content-type": "application/json" });
      res.end(JSON.stringify({ error: `${req.url ?? "this path"} needs a client certificate signed by the cluster CA; only /health/live and /health/ready are open` }) + "\n");
      return;
    }
    this.options.http(req, res, { identity });
  }
}
