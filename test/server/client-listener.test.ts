/**
 * gRPC and HTTP/1.1 on one port (the guide's `curl http://localhost:7000/health/live` next to the
 * gRPC API), in plaintext and with mutual TLS; certificates from test/helpers/certs.ts (openssl).
 */
import * as grpc from "@grpc/grpc-js";
import * as http from "node:http";
import * as https from "node:https";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { ClientListener } from "../../src/server/client-listener.js";
import { TestCa } from "../helpers/certs.js";
import { tempDir } from "../helpers/log-fixtures.js";

const json = {
  serialize: (o: unknown) => Buffer.from(JSON.stringify(o)),
  deserialize: (b: Buffer) => JSON.parse(b.toString()) as unknown,
};
const ECHO: grpc.ServiceDefinition = {
  echo: {
    path: "/test.Echo/Echo", requestStream: false, responseStream: false,
    requestSerialize: json.serialize, requestDeserialize: json.deserialize,
    responseSerialize: json.serialize, responseDeserialize: json.deserialize,
  },
};
const EchoClient = grpc.makeGenericClientConstructor(ECHO, "Echo");

const tmp = tempDir("listener");
const ca = new TestCa(join(tmp.path, "ca"));
const other = new TestCa(join(tmp.path, "other"), "other-ca");
const serverCert = ca.issue("node-1");
const alice = ca.issue("alice");
const mallory = other.issue("mallory");
const listeners: ClientListener[] = [];
afterAll(async () => {
  for (const l of listeners) await l.stop();
  tmp.cleanup();
});

async function start(withTls: boolean): Promise<{ listener: ClientListener; calls: string[] }> {
  const calls: string[] = [];
  const grpcServer = new grpc.Server();
  const ref: { listener?: ClientListener } = {};
  grpcServer.addService(ECHO, {
    echo: (call: grpc.ServerUnaryCall<{ say: string }, unknown>, cb: grpc.sendUnaryData<unknown>) => {
      const who = ref.listener!.identityOf(call.getPeer());
      calls.push(`${who}:${call.request.say}`);
      cb(null, { said: call.request.say, identity: who });
    },
  });
  const listener = new ClientListener({
    listen: "127.0.0.1:0",
    tls: withTls ? { cert: readFileSync(serverCert.cert), key: readFileSync(serverCert.key), ca: ca.pem(), requireClientCert: true } : undefined,
    grpcServer,
    http: (req, res, caller) => {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ path: req.url, identity: caller.identity }));
    },
  });
  ref.listener = listener;
  await listener.start();
  listeners.push(listener);
  return { listener, calls };
}

function echo(address: string, creds: grpc.ChannelCredentials): Promise<{ said: string; identity: string }> {
  const client = new EchoClient(address, creds) as unknown as {
    echo(req: object, opts: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r: { said: string; identity: string }) => void): void;
    close(): void;
  };
  return new Promise((resolve, reject) =>
    client.echo({ say: "hi" }, { deadline: new Date(Date.now() + 3000) }, (e, r) => {
      client.close();
      if (e) reject(e);
      else resolve(r);
    }),
  );
}

function get(url: string, options: https.RequestOptions = {}): Promise<{ status: number; body: string }> {
  const mod = url.startsWith("https") ? https : http;
  return new Promise((resolve, reject) => {
    const req = mod.get(url, options, (res) => {
      let body = "";
      res.on("data", (d: Buffer) => (body += d.toString()));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on("error", reject);
  });
}

describe("ClientListener", () => {
  it("plaintext on loopback: gRPC and HTTP/1.1 on the same port", async () => {
    const { listener } = await start(false);
    expect((await echo(listener.address, grpc.credentials.createInsecure())).said).toBe("hi");
    const r = await get(`http://${listener.address}/health/live`);
    expect(r.status).toBe(200);
    expect(JSON.parse(r.body)).toMatchObject({ path: "/health/live" });
  });

  it("mutual TLS: the certificate's CN is the identity; health is open, the rest needs a certificate", async () => {
    const { listener, calls } = await start(true);
    const good = grpc.credentials.createSsl(ca.pem(), readFileSync(alice.key), readFileSync(alice.cert));
    expect(await echo(listener.address, good)).toEqual({ said: "hi", identity: "alice" });
    const base = `https://${listener.address}`;
    const probe = await get(`${base}/health/ready`, { ca: ca.pem() });
    expect(probe.status).toBe(200);
    const anonymous = await get(`${base}/status`, { ca: ca.pem() });
    expect(anonymous.status).toBe(401);
    expect(anonymous.body).toMatch(/needs a client certificate/);
    const status = await get(`${base}/status`, { ca: ca.pem(), cert: readFileSync(alice.cert), key: readFileSync(alice.key) });
    expect(status.status).toBe(200);
    expect(JSON.parse(status.body)).toMatchObject({ identity: "alice" });
    expect(calls).toEqual(["alice:hi"]);
  });

  it("a gRPC caller without a certificate, or with one from another CA, never reaches a handler", async () => {
    const { listener, calls } = await start(true);
    const noCert = grpc.credentials.createSsl(ca.pem());
    await expect(echo(listener.address, noCert)).rejects.toMatchObject({ code: grpc.status.UNAVAILABLE });
    const foreign = grpc.credentials.createSsl(ca.pem(), readFileSync(mallory.key), readFileSync(mallory.cert));
    await expect(echo(listener.address, foreign)).rejects.toMatchObject({ code: grpc.status.UNAVAILABLE });
    const foreignHttp = await get(`https://${listener.address}/status`, { ca: ca.pem(), cert: readFileSync(mallory.cert), key: readFileSync(mallory.key) });
    expect(foreignHttp.status).toBe(401);
    expect(calls).toEqual([]);
  });
});
