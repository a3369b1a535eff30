/**
 * Transcript tests in the etcd-io/raft datadriven style: each file in testdata/ is a list of
 * commands, each followed by `----` and the output it must produce, then a blank line. Lines
 * starting with `#` before a command are comments. Run with REWRITE=1 to regenerate the expected
 * output after an intended change of behaviour, then read the diff.
 *
 * Entries print as `term/index KIND payload`; log positions (prev=, last=) also as term/index.
 *
 * Commands (ids are node ids; options are key=value):
 *   add-nodes N [voters=1,2,3] [learners=4] [join=true] [prevote=true] [checkquorum=true]
 *             [max-entries=100] [inflight=256] [election=10] [heartbeat=1] [catchup-lag=N]
 *   campaign ID | propose ID DATA | read-index ID REQUEST | transfer-leader FROM TO
 *   add-learner LEADER NODE | promote LEADER NODE | remove LEADER NODE
 *   tick ID COUNT | tick-heartbeat ID...
 *   tick-election ID...  (a leader: one election timeout; others: until the election timer fires)
 *   stabilize [ID...] | process-ready ID... | deliver-msgs ID...
 *   isolate ID | cut A B | drop FROM TO | heal | restart ID
 *   status ID... | raft-log ID | raft-state
 */

import { readFileSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import type { NodeId } from "../../src/log/types.js";
import { RecordKind } from "../../src/log/types.js";
import type { MembershipChange } from "../../src/consensus/types.js";
import { DEFAULT_NODE_OPTIONS, EMPTY_CONFIG, Network, describeEntry, type NodeOptions } from "./network.js";

const TESTDATA = join(import.meta.dirname, "testdata");

interface Block {
  comments: string[];
  command: string;
  expected: string[];
}

function parse(text: string, file: string): { blocks: Block[]; trailing: string[] } {
  const lines = text.split("\n");
  const blocks: Block[] = [];
  let comments: string[] = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i]!;
    if (line.startsWith("#") || line.trim() === "") {
      comments.push(line);
      i++;
      continue;
    }
    const command = line;
    if (lines[i + 1] !== "----") throw new Error(`${file}:${i + 2}: expected ---- after the command "${command}"`);
    i += 2;
    const expected: string[] = [];
    while (i < lines.length && lines[i] !== "") expected.push(lines[i++]!);
    i++; // the blank line ending the block
    blocks.push({ comments, command, expected });
    comments = [];
  }
  return { blocks, trailing: comments.filter((c) => c.trim() !== "") };
}

function render(blocks: readonly Block[], outputs: readonly string[][], trailing: readonly string[]): string {
  const parts: string[] = [];
  blocks.forEach((block, i) => {
    for (const comment of block.comments) parts.push(comment);
    parts.push(block.command, "----", ...outputs[i]!, "");
  });
  parts.push(...trailing);
  return parts.join("\n").replace(/\n*$/, "\n");
}

const encoder = new TextEncoder();

class TranscriptRunner {
  private readonly network = new Network();
  private nextId = 1;

  run(command: string): string[] {
    const [name, ...rest] = command.trim().split(/\s+/);
    const args = rest.filter((a) => !a.includes("="));
    const options = new Map(rest.filter((a) => a.includes("=")).map((a) => a.split("=") as [string, string]));
    const ids = args.map((a) => Number(a) as NodeId);
    const net = this.network;
    net.output = [];
    switch (name) {
      case "add-nodes":
        this.addNodes(Number(args[0]), options);
        break;
      case "campaign":
        net.with(ids[0]!, (core) => core.campaign());
        break;
      case "propose": {
        const data = encoder.encode(args[1] ?? "data");
        const result = net.with(ids[0]!, (core) => core.propose([{ kind: RecordKind.EVENTS, tenant: "t", payload: data }]));
        net.output.push(result.ok ? `proposed at ${result.term}/${result.firstIndex}` : `refused ${result.code}: ${result.message}`);
        break;
      }
      case "read-index": {
        const result = net.with(ids[0]!, (core) => core.readIndex(Number(args[1])));
        net.output.push(result.ok ? "accepted" : `refused ${result.code}: ${result.message}`);
        break;
      }
      case "transfer-leader": {
        const result = net.with(ids[0]!, (core) => core.transferLeader(ids[1]!));
        net.output.push(result.ok ? "accepted" : `refused ${result.code}: ${result.message}`);
        break;
      }
      case "add-learner":
        this.change(ids[0]!, { type: "ADD_LEARNER", node: ids[1]! });
        break;
      case "promote":
        this.change(ids[0]!, { type: "PROMOTE_LEARNER", node: ids[1]! });
        break;
      case "remove":
        this.change(ids[0]!, { type: "REMOVE_NODE", node: ids[1]! });
        break;
      case "tick":
        net.tick(ids[0]!, Number(args[1]));
        break;
      case "tick-election":
        for (const id of ids) net.tickElection(id);
        break;
      case "tick-heartbeat":
        for (const id of ids) net.tick(id, net.node(id).options.heartbeatTicks);
        break;
      case "stabilize":
        net.stabilize(ids.length > 0 ? ids : undefined);
        break;
      case "process-ready":
        for (const id of ids) net.processReady(id);
        break;
      case "deliver-msgs":
        for (const id of ids) net.deliver(id);
        break;
      case "isolate":
        net.isolate(ids[0]!);
        break;
      case "cut":
        net.cut(ids[0]!, ids[1]!);
        break;
      case "drop":
        net.drop(ids[0]!, ids[1]!);
        break;
      case "heal":
        net.heal();
        break;
      case "restart":
        net.restart(ids[0]!);
        break;
      case "status":
        for (const id of ids) net.output.push(...net.describeNode(id));
        break;
      case "raft-log":
        net.output.push(...net.node(ids[0]!).storage.entries.map(describeEntry));
        break;
      case "raft-state":
        for (const id of net.ids()) net.output.push(net.describeNode(id)[0]!);
        break;
      default:
        throw new Error(`unknown command "${name}"`);
    }
    return net.output.length === 0 ? ["ok"] : net.output;
  }

  private addNodes(count: number, options: Map<string, string>): void {
    const nodeOptions: NodeOptions = {
      ...DEFAULT_NODE_OPTIONS,
      preVote: (options.get("prevote") ?? "true") === "true",
      checkQuorum: (options.get("checkquorum") ?? "true") === "true",
      electionTicks: Number(options.get("election") ?? DEFAULT_NODE_OPTIONS.electionTicks),
      heartbeatTicks: Number(options.get("heartbeat") ?? DEFAULT_NODE_OPTIONS.heartbeatTicks),
      entriesPerRpcMax: Number(options.get("max-entries") ?? DEFAULT_NODE_OPTIONS.entriesPerRpcMax),
      inflightMessagesMax: Number(options.get("inflight") ?? DEFAULT_NODE_OPTIONS.inflightMessagesMax),
      catchUpLagEntries: options.has("catchup-lag") ? Number(options.get("catchup-lag")) : undefined,
    };
    const created: NodeId[] = [];
    for (let i = 0; i < count; i++) created.push(this.nextId++ as NodeId);
    const list = (key: string, fallback: NodeId[]): NodeId[] => {
      const value = options.get(key);
      return value === undefined ? fallback : value.split(",").filter((s) => s !== "").map((s) => Number(s) as NodeId);
    };
    const bootstrap =
      options.get("join") === "true" ? EMPTY_CONFIG : { voters: list("voters", created), learners: list("learners", []) };
    for (const id of created) this.network.addNode(id, bootstrap, nodeOptions);
  }

  private change(leader: NodeId, change: MembershipChange): void {
    const result = this.network.with(leader, (core) => core.changeMembership(change));
    this.network.output.push(result.ok ? `proposed at index ${result.index}` : `refused ${result.code}: ${result.message}`);
  }
}

describe("consensus transcripts", () => {
  const files = readdirSync(TESTDATA).filter((f) => f.endsWith(".txt")).sort();
  for (const file of files) {
    it(file, () => {
      const path = join(TESTDATA, file);
      const original = readFileSync(path, "utf8");
      const { blocks, trailing } = parse(original, file);
      const runner = new TranscriptRunner();
      const outputs = blocks.map((block) => runner.run(block.command));
      const actual = render(blocks, outputs, trailing);
      if (process.env["REWRITE"] === "1") {
        writeFileSync(path, actual);
        return;
      }
      expect(actual).toBe(original);
    });
  }
});
