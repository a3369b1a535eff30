/**
 * Tenants, migrations and projections through the Admin API. Each change is an ADMIN log entry
 * proposed on the leader (checked there first, so most mistakes are refused before they reach the
 * log) and applied at its position on every node; the answer waits until it is applied here, and
 * for schema and projection commands until this node's projector has run it, so a failing
 * migration is reported with its error.
 */

import type { RaftDriver } from "../consensus/driver.js";
import { Role } from "../consensus/types.js";
import { RecordKind } from "../log/types.js";
import { ErrorCode, InvalidArgumentError, NotFoundError, QuotaExceededError, VerityError } from "../errors.js";
import { encodeAdminCommand, type AdminCommand } from "../projections/event-codec.js";
import { checkMigrationSql, parseProjectionToml } from "../projections/projection-definition.js";
import type { Projector } from "../projections/projector.js";
import type { EventStateMachine } from "./event-apply.js";
import { checkTenant } from "./data-plane.js";

/** How long a command waits to be committed and applied here. */
export const COMMAND_WAIT_MS = 15_000;

export interface TenantAdminDeps {
  driver(): RaftDriver | undefined;
  readonly stateMachine: EventStateMachine;
  readonly projector: Projector;
  readonly tenantsMax: number;
  /** Names the leader when this node is not it. */
  notLeader(): VerityError;
}

export interface TenantInfo {
  tenant: string;
  createdAt: number;
  streams: number;
  events: number;
  bytes: number;
  projections: string[];
  appliedPosition: number;
}

export class TenantAdmin {
  constructor(private readonly deps: TenantAdminDeps) {}

  private get store() {
    return this.deps.stateMachine.store;
  }

  private requireTenant(tenant: string): void {
    checkTenant(tenant);
    if (!this.store.tenantExists(tenant)) throw new NotFoundError(`tenant "${tenant}" does not exist: create it with verity-admin tenant create --tenant ${tenant}`);
  }

  /** Proposes `command` for `tenant` on the leader and waits until it is applied on this node. */
  private async propose(tenant: string, command: AdminCommand): Promise<number> {
    const d = this.deps.driver();
    if (d === undefined || d.raft.softState().role !== Role.LEADER) throw this.deps.notLeader();
    const result = d.input((core) => core.propose([{ kind: RecordKind.ADMIN, tenant, payload: encodeAdminCommand(command) }]));
    if (!result.ok) throw new VerityError(result.code, result.message);
    const applied = await this.deps.stateMachine.awaitCommand(result.term, result.firstIndex, COMMAND_WAIT_MS);
    return applied.position;
  }

  /** Waits for this node's projector to run the command at `position`; throws with its error when it failed. */
  private async projected(tenant: string, position: number, what: string): Promise<string> {
    const reached = await this.deps.projector.waitProjected(tenant, position, COMMAND_WAIT_MS);
    if (!reached) throw new VerityError(ErrorCode.UNAVAILABLE, `the ${what} is committed at position ${position} but this node has not applied it within ${COMMAND_WAIT_MS} ms; check projection status`);
    const outcome = (await this.deps.projector.tenant(tenant)).commandOutcome(position) ?? "applied";
    if (outcome.startsWith("failed: ")) throw new VerityError(ErrorCode.FAILED_PRECONDITION, `the ${what} at position ${position} failed on every node and changed nothing: ${outcome.slice(8)}`);
    return outcome;
  }

  async createTenant(tenant: string): Promise<{ position: number; message: string }> {
    checkTenant(tenant);
    if (this.store.tenantExists(tenant)) throw new VerityError(ErrorCode.ALREADY_EXISTS, `tenant "${tenant}" exists already`);
    const count = this.store.tenantCount();
    if (count >= this.deps.tenantsMax) {
      throw new QuotaExceededError("limits.max_tenants", this.deps.tenantsMax, `the cluster has ${count} tenants, limits.max_tenants (${this.deps.tenantsMax}): raise the limit on every node or remove unused tenants`);
    }
    const position = await this.propose(tenant, { kind: "createTenant", body: {} });
    return { position, message: `tenant "${tenant}" created at position ${position}` };
  }

  async listTenants(): Promise<TenantInfo[]> {
    const out: TenantInfo[] = [];
    // Bounded by limits.max_tenants; one at a time, since opening a tenant may unwrap its data key.
    for (const row of this.store.tenantList()) out.push(await this.info(row.tenant));
    return out;
  }

  async showTenant(tenant: string): Promise<TenantInfo> {
    this.requireTenant(tenant);
    return this.info(tenant);
  }

  private async info(tenant: string): Promise<TenantInfo> {
    const row = this.store.tenant(tenant)!;
    const t = await this.deps.projector.tenant(tenant);
    return { ...row, projections: t.projectionNames(), appliedPosition: t.appliedPosition };
  }

  async migrate(tenant: string, sql: string, name: string): Promise<{ position: number; message: string }> {
    this.requireTenant(tenant);
    checkMigrationSql(sql);
    const position = await this.propose(tenant, { kind: "migrate", body: { name, sql } });
    await this.projected(tenant, position, "migration");
    return { position, message: `migration ${name === "" ? "" : `"${name}" `}applied at position ${position}` };
  }

  async schema(tenant: string): Promise<object> {
    this.requireTenant(tenant);
    const t = await this.deps.projector.tenant(tenant);
    return { tenant, ...t.schema(), appliedPosition: t.appliedPosition };
  }

  async createProjection(tenant: string, definitionToml: string, fromStart: boolean): Promise<{ position: number; message: string }> {
    this.requireTenant(tenant);
    const definition = parseProjectionToml(definitionToml);
    if ((await this.deps.projector.tenant(tenant)).hasProjection(definition.name)) {
      throw new VerityError(ErrorCode.ALREADY_EXISTS, `tenant "${tenant}" has a projection "${definition.name}" already: rebuild it, or choose another name`);
    }
    const definitionJson = JSON.stringify({ name: definition.name, handlers: definition.handlers.map((h) => ({ event_type: h.eventType, sql: h.sql })) });
    const position = await this.propose(tenant, { kind: "createProjection", body: { definitionJson, fromStart } });
    await this.projected(tenant, position, "projection definition");
    return { position, message: `projection "${definition.name}" created at position ${position}; it applies ${fromStart ? "every event from the start" : "events after that position"}` };
  }

  async rebuildProjection(tenant: string, name: string): Promise<{ position: number; message: string }> {
    this.requireTenant(tenant);
    if (name === "") throw new InvalidArgumentError("give the projection to rebuild (--projection NAME)");
    if (!(await this.deps.projector.tenant(tenant)).hasProjection(name)) throw new NotFoundError(`tenant "${tenant}" has no projection "${name}" (see projection status)`);
    const position = await this.propose(tenant, { kind: "rebuildProjection", body: { name } });
    await this.projected(tenant, position, "rebuild");
    return { position, message: `projection "${name}" is rebuilding from its start (position ${position}); projection status shows its progress` };
  }

  /** Turns the cluster's write freeze on or off (a cluster-wide entry). */
  async setReadOnly(on: boolean, reason: string): Promise<{ position: number; message: string }> {
    if (Buffer.byteLength(reason) > 1024) throw new InvalidArgumentError("the reason is longer than 1024 bytes");
    const position = await this.propose("", { kind: "setReadOnly", body: { on, reason } });
    return { position, message: on ? `the cluster is read-only from position ${position}: appends are refused, reads and queries go on` : `writes resume from position ${position}` };
  }

  /** Each projection's state, this node's applied positions, and the digest of the tenant's database. */
  async projectionStatus(tenant: string, commitIndex: number): Promise<object> {
    this.requireTenant(tenant);
    const t = await this.deps.projector.tenant(tenant);
    const lastEvent = this.store.lastEventPosition(tenant);
    // The digest reads every row: computed once per state (cached), and not while a rebuild runs.
    return { tenant, projections: t.status(lastEvent), appliedPosition: t.appliedPosition, commitIndex, digest: t.hasRebuilding ? "" : t.cachedDigest() };
  }
}
