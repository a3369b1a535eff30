/** Binding a Node server to a "host:port" address (port 0 picks one) and naming what it got. */

import type * as net from "node:net";
import { InvalidArgumentError } from "../errors.js";
import { formatHostPort, parseHostPort, type HostPort } from "./setting-values.js";

/** Parses "host:port" ("[::1]:7000" too), throwing a clear error for a malformed one. */
export function hostPortOf(address: string): HostPort {
  const parsed = parseHostPort(address);
  if (!parsed.ok) throw new InvalidArgumentError(`address "${address}" ${parsed.reason}`);
  return parsed.value;
}

/** Listens on `address` and resolves with the address actually bound (the chosen port for port 0). */
export async function listenOn(server: net.Server, address: string): Promise<string> {
  const { host, port } = hostPortOf(address);
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const bound = server.address() as net.AddressInfo;
  return formatHostPort({ host: bound.address, port: bound.port });
}
