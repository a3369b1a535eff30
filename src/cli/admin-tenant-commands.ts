/**
 * verity-admin's tenant and schema commands over the Admin API: `tenant create | list | show`,
 * `migrate` and `schema show`. Changes (create, migrate) are replicated commands: they go to the
 * leader (AdminApi skips an endpoint that answers UNAVAILABLE, which is what a follower answers),
 * and are answered once applied, with the log position they were applied at. Reads are answered
 * by the first endpoint that answers, from what that node has applied.
 */

import { basename } from "node:path";
import type { Argv } from "yargs";
import { checkMigrationSql } from "../projections/projection-definition.js";
import { ExitCode } from "./common.js";
import { command } from "./admin-commands.js";
import { api, connectionOptions, type Connection } from "./admin-connection.js";
import { printJson } from "./admin-output.js";
import {
  checkArgumentFile, checkTenantArgument, readArgumentFile, tenantOption,
  type CommandResponse, type SchemaInfo, type TenantInfo,
} from "./admin-tenant-api.js";
import { printLines, schemaLines, tenantLines, tenantShowLines } from "./admin-tenant-output.js";

type TenantArgs = Connection & { tenant: string };

const tenantCreate = command<TenantArgs>(async (a) => {
  const response = (await api(a).call("createTenant", { tenant: a.tenant })).response as unknown as CommandResponse;
  if (a.json) printJson(response);
  else printLines([response.message]);
  return ExitCode.OK;
});

const tenantList = command<Connection>(async (a) => {
  const tenants = ((await api(a).call("listTenants", {})).response.tenants ?? []) as TenantInfo[];
  if (a.json) printJson({ tenants });
  else printLines(tenantLines(tenants));
  return ExitCode.OK;
});

const tenantShow = command<TenantArgs>(async (a) => {
  const tenant = (await api(a).call("showTenant", { tenant: a.tenant })).response as unknown as TenantInfo;
  if (a.json) printJson(tenant);
  else printLines(tenantShowLines(tenant));
  return ExitCode.OK;
});

const migrate = command<TenantArgs & { "migration-file": string; name?: string }>(async (a) => {
  const file = a["migration-file"];
  const sql = readArgumentFile(file, "--migration-file");
  checkArgumentFile(file, "--migration-file", () => checkMigrationSql(sql));
  const name = a.name ?? basename(file);
  // A migration that fails when applied changes nothing on any node; the server answers
  // FAILED_PRECONDITION with the SQL error, reported as every refusal is (exit 1).
  const response = (await api(a).call("migrate", { tenant: a.tenant, sql, name })).response as unknown as CommandResponse;
  if (a.json) printJson({ ...response, name });
  else printLines([response.message]);
  return ExitCode.OK;
});

const schemaShow = command<TenantArgs>(async (a) => {
  const schema = (await api(a).call("showSchema", { tenant: a.tenant })).response as unknown as SchemaInfo;
  if (a.json) printJson(schema);
  else printLines(schemaLines(schema));
  return ExitCode.OK;
});

const tenantConnection = { ...connectionOptions, ...tenantOption } as const;

function addTenantSubcommands(c: Argv): Argv {
  return c
    .command("create", "Create a tenant (a replicated command: answered with the position it was applied at)",
      (s) => s.options(tenantConnection).check(checkTenantArgument)
        .example("$0 tenant create --tenant 123", "Create tenant 123 before its first append"),
      tenantCreate)
    .command("list", "Every tenant: streams, events, bytes, projections and the answering node's applied position",
      (s) => s.options(connectionOptions)
        .example("$0 tenant list", "Every tenant, as a table")
        .example("$0 tenant list --json | jq '.tenants[].tenant'", "The tenant ids"),
      tenantList)
    .command("show", "One tenant: created at, streams, events, bytes, projections, applied position",
      (s) => s.options(tenantConnection).check(checkTenantArgument)
        .example("$0 tenant show --tenant 123", "Tenant 123's counts"),
      tenantShow)
    .example("$0 tenant list", "Every tenant")
    .demandCommand(1, "tenant needs a subcommand: create, list or show");
}

export function addTenantCommands(y: Argv): Argv {
  return y
    .command("tenant", "Tenants: create, list, show", addTenantSubcommands)
    .command("migrate", "Apply a schema migration (SQL DDL, all or nothing) to a tenant's projection database",
      (s) => s.options({
        ...tenantConnection,
        "migration-file": { type: "string", demandOption: true, describe: "The SQL file to apply" },
        name: { type: "string", describe: "The migration's name in schema show (default: the file's name)" },
      }).check(checkTenantArgument)
        .example("$0 migrate --tenant 123 --migration-file /migrations/001_add_column.sql", "Apply a migration, then check it with schema show")
        .example("$0 migrate --tenant 123 --migration-file fix.sql --name 002_ward_optional --json", "With a name of your choosing, as JSON"),
      migrate)
    .command("schema", "A tenant's projection database", (c) =>
      c.command("show", "The tables with their columns and row counts, and the migrations applied (position, name, outcome)",
        (s) => s.options(tenantConnection).check(checkTenantArgument)
          .example("$0 schema show --tenant 123", "Verify a migration")
          .example("$0 schema show --tenant 123 --json", "The schema as JSON"),
        schemaShow)
        .example("$0 schema show --tenant 123", "Tables, columns and migrations of tenant 123")
        .demandCommand(1, "schema needs a subcommand: show"));
}
