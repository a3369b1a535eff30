/**
 * Where the nodes live, and how links between them are cut.
 *
 * - `NamespaceNetwork` (root only): every node runs in a network namespace of its own
 *   (`vj<pid>x<k>n<id>`), with one address 10.213.X.(10+id) on a veth whose other end sits on a
 *   bridge in a switch namespace (`vj<pid>x<k>sw`). The harness reaches every node through a veth of
 *   its own (10.213.X.1), which partitions never touch: clients can still talk to an isolated node,
 *   which is how stale reads from a deposed leader show up. A directed link A -> B is cut with a
 *   permanent neighbour entry in A's namespace that maps B's address to a MAC nobody has: every
 *   frame A sends to B is silently lost on the bridge (data on A's connections to B, and A's
 *   acknowledgements and answers on B's connections to A), the way a firewall DROP rule behaves:
 *   connects and writes time out rather than fail at once. (A blackhole route would fail connects
 *   at once with an error; iptables and tc drop actions are not installed on this machine.)
 *   That is an asymmetric cut; a full partition cuts both directions. Nothing is added to the
 *   host's own routing or firewall; `teardown` deletes the namespaces and with them every route
 *   and interface the run made.
 * - `LoopbackNetwork`: every node on 127.0.0.1 with its own ports; links cannot be cut (the
 *   partition nemesis needs namespaces).
 */

import { execFile, execFileSync } from "node:child_process";
import * as net from "node:net";
import { promisify } from "node:util";
import {
  IP_COMMAND_TIMEOUT_MS, LOOPBACK_PORT_MAX, LOOPBACK_PORT_MIN, NAMESPACE_CLIENT_PORT, NAMESPACE_CLUSTER_PORT, NAMESPACE_METRICS_PORT,
  PORT_ATTEMPTS_MAX, SUBNET_OCTETS_MAX,
} from "./constants.js";

const execFileAsync = promisify(execFile);

/** Where one node listens. */
export interface NodeEndpoints {
  host: string;
  client: number;
  cluster: number;
  metrics: number;
}

/** A directed link: packets from `from` to `to`. */
export type Link = readonly [from: number, to: number];

export interface Network {
  readonly kind: "netns" | "loopback";
  /** Whether links can be cut (the partition nemesis). */
  readonly canPartition: boolean;
  /** Prepares what node `id` needs and returns its addresses (the same ones on every call). */
  addNode(id: number): Promise<NodeEndpoints>;
  /** The command line that runs `command args` for node `id` (inside its namespace). */
  wrap(id: number, command: string, args: readonly string[]): { command: string; args: string[] };
  /** Removes what `addNode` made for a node that left the cluster for good (its process has exited). */
  removeNode(id: number): void;
  /** Makes exactly these directed links drop every packet; every other link works. */
  setBlocked(links: readonly Link[]): Promise<void>;
  /** The links cut now. */
  blocked(): Link[];
  /** Removes everything the network made (synchronous: it runs from exit handlers too). */
  teardown(): void;
}

async function ip(args: readonly string[]): Promise<void> {
  await execFileAsync("ip", args, { timeout: IP_COMMAND_TIMEOUT_MS });
}

function ipSync(args: readonly string[]): string {
  return execFileSync("ip", args, { timeout: IP_COMMAND_TIMEOUT_MS, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** A locally administered MAC that no interface has: frames sent to it are flooded by the bridge and accepted by nobody. */
const NOWHERE_MAC = "02:00:00:00:de:ad";

const NAMESPACE_NAME = /^vj(\d+)x\d+(sw|n\d+)$/;
/** Networks made by this process so far: each gets its own names (the kernel frees deleted ones a little later). */
let networksMade = 0;

/** Deletes namespaces left by harness runs whose process is gone (a run killed before its teardown). */
export function removeStaleNamespaces(): string[] {
  const removed: string[] = [];
  let listing: string;
  try {
    listing = ipSync(["netns", "list"]);
  } catch {
    return removed;
  }
  for (const line of listing.split("\n")) {
    const name = line.split(" ")[0] ?? "";
    const m = NAMESPACE_NAME.exec(name);
    if (m === null || alive(Number(m[1]))) continue;
    try {
      ipSync(["netns", "del", name]);
      removed.push(name);
    } catch {
      // Already gone, or still busy: the next run tries again.
    }
  }
  return removed;
}

/** True when this process may create network namespaces (root, and `ip netns` works). */
export function namespacesAvailable(): boolean {
  if (process.getuid?.() !== 0) return false;
  try {
    ipSync(["netns", "list"]);
    return true;
  } catch {
    return false;
  }
}

export class NamespaceNetwork implements Network {
  readonly kind = "netns" as const;
  readonly canPartition = true;
  private readonly tag = `${process.pid}x${networksMade++}`;
  private octet = -1;
  private readonly nodes = new Set<number>();
  private current: Link[] = [];
  private torndown = false;

  private get switchNs(): string {
    return `vj${this.tag}sw`;
  }

  private nodeNs(id: number): string {
    return `vj${this.tag}n${id}`;
  }

  hostOf(id: number): string {
    return `10.213.${this.octet}.${10 + id}`;
  }

  /** The harness's own address on the bridge. */
  get harnessHost(): string {
    return `10.213.${this.octet}.1`;
  }

  /** Creates the switch namespace, its bridge and the harness's own link to it. */
  async setup(): Promise<void> {
    removeStaleNamespaces();
    const routes = ipSync(["-4", "route", "show", "table", "all"]) + ipSync(["-4", "addr"]);
    const start = process.pid % SUBNET_OCTETS_MAX;
    for (let i = 0; i < SUBNET_OCTETS_MAX && this.octet < 0; i++) {
      const candidate = (start + i) % SUBNET_OCTETS_MAX;
      if (!routes.includes(`10.213.${candidate}.`)) this.octet = candidate;
    }
    if (this.octet < 0) throw new Error("no free 10.213.X.0/24 subnet for the run's namespaces");
    const sw = this.switchNs;
    await ip(["netns", "add", sw]);
    await ip(["-n", sw, "link", "set", "lo", "up"]);
    await ip(["-n", sw, "link", "add", "br0", "type", "bridge"]);
    await ip(["-n", sw, "link", "set", "br0", "up"]);
    const hostEnd = `vj${this.tag}h`;
    await ip(["link", "add", hostEnd, "type", "veth", "peer", "name", "port", "netns", sw]);
    await ip(["-n", sw, "link", "set", "port", "master", "br0", "up"]);
    await ip(["addr", "add", `${this.harnessHost}/24`, "dev", hostEnd]);
    await ip(["link", "set", hostEnd, "up"]);
  }

  async addNode(id: number): Promise<NodeEndpoints> {
    const endpoints = { host: this.hostOf(id), client: NAMESPACE_CLIENT_PORT, cluster: NAMESPACE_CLUSTER_PORT, metrics: NAMESPACE_METRICS_PORT };
    if (this.nodes.has(id)) return endpoints;
    const ns = this.nodeNs(id);
    const sw = this.switchNs;
    await ip(["netns", "add", ns]);
    this.nodes.add(id);
    await ip(["-n", ns, "link", "set", "lo", "up"]);
    await ip(["-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", `n${id}`, "netns", sw]);
    await ip(["-n", sw, "link", "set", `n${id}`, "master", "br0", "up"]);
    await ip(["-n", ns, "addr", "add", `${endpoints.host}/24`, "dev", "eth0"]);
    await ip(["-n", ns, "link", "set", "eth0", "up"]);
    return endpoints;
  }

  wrap(id: number, command: string, args: readonly string[]): { command: string; args: string[] } {
    return { command: "ip", args: ["netns", "exec", this.nodeNs(id), command, ...args] };
  }

  removeNode(id: number): void {
    if (!this.nodes.delete(id)) return;
    this.current = this.current.filter(([a, b]) => a !== id && b !== id);
    try {
      ipSync(["netns", "del", this.nodeNs(id)]);
    } catch {
      // Gone already.
    }
  }

  blocked(): Link[] {
    return [...this.current];
  }

  async setBlocked(links: readonly Link[]): Promise<void> {
    const key = (l: Link): string => `${l[0]}>${l[1]}`;
    const want = new Map(links.filter(([a, b]) => a !== b && this.nodes.has(a) && this.nodes.has(b)).map((l) => [key(l), l]));
    const have = new Map(this.current.map((l) => [key(l), l]));
    for (const [k, [from, to]] of have) {
      if (!want.has(k)) await ip(["-n", this.nodeNs(from), "neigh", "del", this.hostOf(to), "dev", "eth0"]);
    }
    for (const [k, [from, to]] of want) {
      if (!have.has(k)) await ip(["-n", this.nodeNs(from), "neigh", "replace", this.hostOf(to), "lladdr", NOWHERE_MAC, "dev", "eth0", "nud", "permanent"]);
    }
    this.current = [...want.values()];
  }

  teardown(): void {
    if (this.torndown) return;
    this.torndown = true;
    for (const id of this.nodes) {
      try {
        ipSync(["netns", "del", this.nodeNs(id)]);
      } catch {
        // Gone already.
      }
    }
    try {
      // Deleting the switch namespace removes the harness's veth with its peer.
      ipSync(["netns", "del", this.switchNs]);
    } catch {
      // Gone already.
    }
  }
}

export async function freePort(): Promise<number> {
  // Bounded: PORT_ATTEMPTS_MAX random candidates.
  for (let attempt = 0; attempt < PORT_ATTEMPTS_MAX; attempt++) {
    const port = LOOPBACK_PORT_MIN + Math.floor(Math.random() * (LOOPBACK_PORT_MAX - LOOPBACK_PORT_MIN));
    const s = net.createServer();
    const free = await new Promise<boolean>((resolve) => {
      s.once("error", () => resolve(false));
      s.listen(port, "127.0.0.1", () => resolve(true));
    });
    if (free) {
      await new Promise<void>((r) => s.close(() => r()));
      return port;
    }
  }
  throw new Error(`no free port found between ${LOOPBACK_PORT_MIN} and ${LOOPBACK_PORT_MAX}`);
}

export class LoopbackNetwork implements Network {
  readonly kind = "loopback" as const;
  readonly canPartition = false;
  private readonly nodes = new Map<number, NodeEndpoints>();

  async addNode(id: number): Promise<NodeEndpoints> {
    let e = this.nodes.get(id);
    if (e === undefined) {
      e = { host: "127.0.0.1", client: await freePort(), cluster: await freePort(), metrics: await freePort() };
      this.nodes.set(id, e);
    }
    return e;
  }

  wrap(_id: number, command: string, args: readonly string[]): { command: string; args: string[] } {
    return { command, args: [...args] };
  }

  removeNode(): void {}

  blocked(): Link[] {
    return [];
  }

  async setBlocked(links: readonly Link[]): Promise<void> {
    if (links.length > 0) throw new Error("links cannot be cut on loopback: run as root so the harness can use network namespaces");
  }

  teardown(): void {}
}
