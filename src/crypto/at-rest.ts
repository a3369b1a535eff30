/**
 * At-rest encryption of one node's files (issue 9): the key provider that wraps data keys, and the
 * cluster every data key is bound to. `undefined` wherever encryption is off.
 *
 * The server opens the provider from `[encryption]` (openKeyProvider) before the data directory, and
 * DataDir.open binds it to the directory's cluster id; the log, the event index, the projections and
 * the query workers all take it from `DataDir.encryption`.
 */

import type { EncryptionContext } from "./encryption-context.js";
import type { KeyProvider } from "./kms.js";

export interface AtRestEncryption {
  /** The configured provider, already wrapped in the data key cache and checked with `describe()`. */
  readonly provider: KeyProvider;
  /** The cluster id as text (meta/state.json's); part of every encryption context. */
  readonly clusterId: string;
}

/** The encryption context of one file of this node. */
export function contextFor(atRest: AtRestEncryption, fileIdentity: string): EncryptionContext {
  return { clusterId: atRest.clusterId, fileIdentity };
}
