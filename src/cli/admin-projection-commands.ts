/**
 * verity-admin's projection commands over the Admin API: `projection create` (a TOML definition),
 * `projection status` (exit 1 when a projection has failed, as a check does) and `projection
 * rebuild` (with `--wait`, the default on a terminal: progress until it runs again). Create and
 * rebuild are replicated commands and go to the leader; status is answered by the first endpoint
 * that answers, from what that node has applied.
 */

import type { Argv } from "yargs";
import { AdminApi } from "../client/admin-client.js";
import { assertNever } from "../errors.js";
import { parseProjectionToml } from "../projections/projection-definition.js";
import { parseDuration } from "../server/setting-values.js";
import { ExitCode } from "./common.js";
import { command } from "./admin-commands.js";
import { api, connectionOptions, tlsOf, type Connection } from "./admin-connection.js";
import { UsageError, printJson } from "./admin-output.js";
import {
  checkArgumentFile, checkTenantArgument, readArgumentFile, tenantOption,
  type CommandResponse, type ProjectionStatusResponse,
} from "./admin-tenant-api.js";
import { printLines, projectionStatusLines } from "./admin-tenant-output.js";
import { ProgressReporter, waitForRebuild, type RebuildOutcome } from "./admin-projection-progress.js";

type TenantArgs = Connection & { tenant: string };

const projectionCreate = command<TenantArgs & { file: string; "from-start": boolean }>(async (a) => {
  const definition = readArgumentFile(a.file, "--file");
  const { name } = checkArgumentFile(a.file, "--file", () => parseProjectionToml(definition));
  const response = (await api(a).call("createProjection", { tenant: a.tenant, definition, fromStart: a["from-start"] })).response as unknown as CommandResponse;
  if (a.json) printJson({ ...response, name });
  else printLines([response.message]);
  return ExitCode.OK;
});

const projectionStatus = command<TenantArgs>(async (a) => {
  const { endpoint, response } = await api(a).call("projectionStatus", { tenant: a.tenant });
  const status = response as unknown as ProjectionStatusResponse;
  const failed = status.projections.filter((p) => p.state === "failed").map((p) => p.name);
  if (a.json) printJson({ ...status, endpoint });
  else {
    const lines = projectionStatusLines(status, endpoint);
    if (failed.length > 0) lines.push(`${failed.length} of ${status.projections.length} ${status.projections.length === 1 ? "projection" : "projections"} failed: ${failed.join(", ")}`);
    printLines(lines);
  }
  return failed.length > 0 ? ExitCode.FAILED : ExitCode.OK;
});

type RebuildArgs = TenantArgs & { projection: string; wait?: boolean; timeout: string };

function rebuildTimeoutMs(a: RebuildArgs): number {
  const parsed = parseDuration(a.timeout);
  if (!parsed.ok) throw new UsageError(`--timeout ${a.timeout}: ${parsed.reason}`);
  return parsed.value;
}

function outcomeLines(a: RebuildArgs, o: RebuildOutcome): string[] {
  const seconds = (o.waitedMs / 1000).toFixed(1);
  const p = o.projection;
  switch (o.result) {
    case "running":
      return [`projection "${p.name}" rebuilt in ${seconds}s: running at position ${p.appliedPosition} (the tenant's applied position ${o.tenantAppliedPosition})`];
    case "failed":
      return [
        `projection "${p.name}" FAILED during the rebuild at position ${p.errorPosition}: ${p.error}`,
        `  fix the cause (a migration, or the handler), then run verity-admin projection rebuild --tenant ${a.tenant} --projection ${p.name} again`,
      ];
    case "timeout":
      return [`projection "${p.name}" is still rebuilding after ${a.timeout} (position ${p.appliedPosition} of ${o.tenantAppliedPosition}): ` +
        `the rebuild goes on; follow it with verity-admin projection status --tenant ${a.tenant}`];
    default:
      return assertNever(o.result);
  }
}

const projectionRebuild = command<RebuildArgs>(async (a) => {
  const wait = a.wait ?? process.stdout.isTTY === true;
  const timeoutMs = rebuildTimeoutMs(a);
  const { endpoint, response } = await api(a).call("rebuildProjection", { tenant: a.tenant, projection: a.projection });
  const started = response as unknown as CommandResponse;
  if (!wait) {
    if (a.json) printJson(started);
    else printLines([started.message]);
    return ExitCode.OK;
  }
  if (!a.json) printLines([started.message]);
  // Polls the node that accepted the rebuild: it has applied the rebuild command (another node may not have yet).
  const polled = new AdminApi({ endpoints: [endpoint], tls: tlsOf(a) });
  const outcome = await waitForRebuild({ api: polled, tenant: a.tenant, projection: a.projection, timeoutMs }, new ProgressReporter(`rebuild ${a.projection}`));
  if (a.json) {
    printJson({ ...started, rebuilt: outcome.result === "running", result: outcome.result, projection: outcome.projection,
      tenantAppliedPosition: outcome.tenantAppliedPosition, waitedMs: outcome.waitedMs, endpoint });
  } else printLines(outcomeLines(a, outcome));
  return outcome.result === "running" ? ExitCode.OK : ExitCode.FAILED;
});

const tenantConnection = { ...connectionOptions, ...tenantOption } as const;

function addProjectionSubcommands(c: Argv): Argv {
  return c
    .command("create", "Define a projection from a TOML file (name, [[handlers]] event_type and sql)",
      (s) => s.options({
        ...tenantConnection,
        file: { type: "string", demandOption: true, describe: "The projection file (TOML)" },
        "from-start": { type: "boolean", default: false, describe: "Apply every event of the tenant from the first, not only events after now" },
      }).check(checkTenantArgument)
        .example("$0 projection create --tenant 123 --file patients.toml", "Apply patients.toml's handlers to events from now on")
        .example("$0 projection create --tenant 123 --file patients.toml --from-start", "Replay the tenant's events from the first"),
      projectionCreate)
    .command("status", "Each projection: state, applied position, lag, event types, a failure's error; this node's positions and digest. Exit 1 when one failed",
      (s) => s.options(tenantConnection).check(checkTenantArgument)
        .example("$0 projection status --tenant 123", "Lag and failures of tenant 123's projections")
        .example("$0 projection status --tenant 123 --json", "As JSON (compare digest across nodes)"),
      projectionStatus)
    .command("rebuild", "Rebuild a projection from its start (its tables are cleared and its events replayed); --wait shows progress until it runs again",
      (s) => s.options({
        ...tenantConnection,
        projection: { type: "string", demandOption: true, describe: "The projection's name (as projection status shows it)" },
        wait: { type: "boolean", describe: "Wait until it runs again, showing progress (default: on a terminal; --no-wait to return at once)" },
        timeout: { type: "string", default: "1h", describe: "With --wait: how long to wait (e.g. 30s, 10m, 2h); the rebuild goes on after it" },
      }).check(checkTenantArgument)
        .example("$0 projection rebuild --tenant 123 --projection patients", "Rebuild after a fix (waits with a progress bar on a terminal)")
        .example("$0 projection rebuild --tenant 123 --projection patients --wait --json", "In a script: wait, then one JSON object"),
      projectionRebuild)
    .example("$0 projection status --tenant 123", "Projection lag and failures")
    .demandCommand(1, "projection needs a subcommand: create, status or rebuild");
}

export function addProjectionCommands(y: Argv): Argv {
  return y.command("projection", "Projections: create, status, rebuild", addProjectionSubcommands);
}
