/**
 * `npm run cluster`: a local 3-node cluster on loopback for development. Starts three
 * verity-server processes (data in ./data/cluster/nodeN, logs in ./data/cluster/nodeN.log), waits
 * for a leader, prints the endpoints, and on Ctrl-C stops every node it started (SIGTERM, by PID).
 */

import { spawn, type ChildProcess } from "node:child_process";
import { createWriteStream, mkdirSync } from "node:fs";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { hideBin } from "yargs/helpers";
import { cli } from "./common.js";

const NAME = "npm run cluster --";
const SERVER = fileURLToPath(new URL("../../../bin/verity-server.js", import.meta.url));
/** How long to wait for the cluster to elect a leader before giving up. */
const LEADER_WAIT_MS = 30_000;

interface Member {
  id: number;
  client: number;
  cluster: number;
  metrics: number;
  process?: ChildProcess;
}

async function status(port: number): Promise<Record<string, unknown> | undefined> {
  try {
    const res = await fetch(`http://127.0.0.1:${port}/status`, { signal: AbortSignal.timeout(1000) });
    return res.ok ? ((await res.json()) as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

export async function main(argv: string[]): Promise<void> {
  const args = await cli(NAME, argv, "Start a local 3-node VerityDB cluster on loopback and print its endpoints.", "npm run cluster -- [options]")
    .options({
      "base-port": { type: "number", default: 7100, describe: "Client ports are base+1..3, cluster ports base+11..13, metrics base+21..23" },
      "data-dir": { type: "string", default: "./data/cluster", describe: "Where the nodes keep their data and logs" },
    })
    .parseAsync();
  const base = args["base-port"];
  const root = resolve(args["data-dir"]);
  mkdirSync(root, { recursive: true });
  const members: Member[] = [1, 2, 3].map((id) => ({ id, client: base + id, cluster: base + 10 + id, metrics: base + 20 + id }));
  for (const m of members) {
    const peers = members.filter((o) => o !== m).map((o) => `127.0.0.1:${o.cluster}`).join(",");
    const out = createWriteStream(join(root, `node${m.id}.log`), { flags: "a" });
    m.process = spawn(process.execPath, [SERVER, "--node-id", String(m.id), "--data-dir", join(root, `node${m.id}`),
      "--bind", `127.0.0.1:${m.client}`, "--cluster-address", `127.0.0.1:${m.cluster}`, "--metrics-address", `127.0.0.1:${m.metrics}`,
      "--cluster-peers", peers], { stdio: ["ignore", "pipe", "pipe"] });
    m.process.stdout!.pipe(out);
    m.process.stderr!.pipe(out);
    m.process.once("exit", (code, signal) => process.stderr.write(`node ${m.id} (pid ${m.process!.pid}) exited: ${code ?? signal}\n`));
  }
  const stopAll = async (): Promise<void> => {
    for (const m of members) if (m.process?.exitCode === null) m.process.kill("SIGTERM");
    await Promise.all(members.map((m) => (m.process?.exitCode === null ? new Promise((r) => m.process!.once("exit", r)) : undefined)));
  };
  process.once("SIGINT", () => void stopAll().then(() => process.exit(0)));
  process.once("SIGTERM", () => void stopAll().then(() => process.exit(0)));
  const deadline = Date.now() + LEADER_WAIT_MS;
  let leader: number | undefined;
  // Bounded by LEADER_WAIT_MS.
  while (leader === undefined && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 200));
    const views = await Promise.all(members.map((m) => status(m.client)));
    const ids = new Set(views.map((v) => v?.leader_id));
    if (views.every((v) => v !== undefined) && ids.size === 1 && !ids.has(0)) leader = views[0]!.leader_id as number;
  }
  if (leader === undefined) {
    process.stderr.write(`no leader within ${LEADER_WAIT_MS / 1000}s; see the logs in ${root}/node*.log. Stopping.\n`);
    await stopAll();
    process.exitCode = 1;
    return;
  }
  const lines = [
    "VerityDB local cluster is up (Ctrl-C stops it)",
    "",
    "node  pid      client           cluster          metrics",
    ...members.map((m) =>
      `${String(m.id).padEnd(5)} ${String(m.process!.pid).padEnd(8)} 127.0.0.1:${m.client}   127.0.0.1:${m.cluster}   127.0.0.1:${m.metrics}${m.id === leader ? "   <- leader" : ""}`),
    "",
    `try: curl http://127.0.0.1:${members[0]!.client}/status`,
    `data and logs: ${root}`,
  ];
  process.stdout.write(lines.join("\n") + "\n");
}

await main(hideBin(process.argv));
