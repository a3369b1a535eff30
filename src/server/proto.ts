/** The protobuf definitions in proto/verity/v1, loaded once with protobufjs. */

import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import protobuf from "protobufjs";

/**
 * The repository's (or installed package's) proto/ directory, found by walking up from this
 * module: it sits at src/server (tests) or dist/src/server (the build), below the root.
 */
function findProtoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  // Bounded: the root is at most a few levels up.
  for (let level = 0; level < 6; level++) {
    const candidate = join(dir, "proto");
    if (existsSync(join(candidate, "verity", "v1", "peer.proto"))) return candidate;
    dir = dirname(dir);
  }
  throw new Error(`proto/verity/v1 not found above ${fileURLToPath(import.meta.url)}: the installation is incomplete`);
}

export const PROTO_ROOT = findProtoRoot();

let root: protobuf.Root | undefined;

/** All of VerityDB's messages, loaded synchronously on first use. */
export function protoRoot(): protobuf.Root {
  if (root === undefined) {
    const r = new protobuf.Root();
    r.resolvePath = (_origin, target) => `${PROTO_ROOT}/${target}`;
    r.loadSync(["verity/v1/entries.proto", "verity/v1/client.proto", "verity/v1/admin.proto", "verity/v1/peer.proto"]);
    r.resolveAll();
    root = r;
  }
  return root;
}

export function protoType(name: string): protobuf.Type {
  return protoRoot().lookupType(`verity.v1.${name}`);
}
