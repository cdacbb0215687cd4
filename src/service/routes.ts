/**
 * The reference service: a small orders-and-payments API built only on the
 * app kit. It is what the lab runs in every region and what the drills hit.
 *
 * - `POST /v1/orders` (Idempotency-Key): the order id is UUIDv5 of the key's
 *   scope and key, so a retry in another region converges on the same row.
 * - `POST /v1/orders/:id/pay` (Idempotency-Key): the payment id is UUIDv5 of
 *   the order id — an order has at most one payment, so even two different
 *   keys paying the same order in two regions converge on one payment.
 * - `GET /v1/orders/:id`, `GET /v1/orders?customer=…`
 * - `POST /v1/login`, `POST /v1/logout`, `GET /v1/me`
 */
import { z } from 'zod';
import { v5 as uuidv5 } from 'uuid';
import { HttpProblem } from '../app/problem.ts';
import { TANDEM_ID_NAMESPACE } from '../app/idempotency.ts';
import type { KitRequest, KitReply, KitRoute } from '../app/kit.ts';
import type { Queryable } from '../app/db.ts';

const MAX_AMOUNT_CENTS = 1_000_000_000_000;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

const item = z
  .object({
    sku: z.string().min(1).max(100),
    qty: z.number().int().min(1).max(10_000),
    priceCents: z.number().int().min(0).max(MAX_AMOUNT_CENTS),
  })
  .strict();

/** The body of `POST /v1/orders`. */
export const createOrderBody = z
  .object({
    customer: z.string().min(1).max(200).optional(),
    items: z.array(item).min(1).max(100).optional(),
    amountCents: z.number().int().min(1).max(MAX_AMOUNT_CENTS).optional(),
    currency: z.string().regex(/^[A-Z]{3}$/, 'expected an ISO 4217 code such as "INR"'),
  })
  .strict();

/** The body of `POST /v1/login`. The reference service trusts the name: it demonstrates sessions, not authentication. */
export const loginBody = z.object({ user: z.string().min(1).max(200) }).strict();

function parseBody<T>(schema: z.ZodType<T>, body: unknown): T {
  const r = schema.safeParse(body ?? {});
  if (r.success) return r.data;
  const errors = r.error.issues.map((i) => ({ path: i.path.join('.') || '(body)', message: i.message }));
  throw new HttpProblem('validation', errors.map((e) => `${e.path}: ${e.message}`).join('; '), { extra: { errors } });
}

interface OrderRow {
  id: string;
  customer: string;
  items: unknown;
  amount_cents: string;
  currency: string;
  status: string;
  correlation_id: string;
  region: string;
  created_at: Date;
  updated_at: Date;
  updated_region: string;
  payment: PaymentRow | null;
}

interface PaymentRow {
  id: string;
  amount_cents: string | number;
  currency: string;
  status: string;
  region: string;
  correlation_id: string;
  created_at: string | Date;
}

/** An order as the API shows it. */
export interface OrderView {
  id: string;
  customer: string;
  items: unknown;
  amountCents: number;
  currency: string;
  status: string;
  region: string;
  correlationId: string;
  createdAt: string;
  updatedAt: string;
  payment: { id: string; amountCents: number; currency: string; status: string; region: string; correlationId: string; createdAt: string } | null;
}

function view(r: OrderRow): OrderView {
  return {
    id: r.id,
    customer: r.customer,
    items: r.items,
    amountCents: Number(r.amount_cents),
    currency: r.currency,
    status: r.status,
    region: r.region,
    correlationId: r.correlation_id,
    createdAt: r.created_at.toISOString(),
    updatedAt: r.updated_at.toISOString(),
    payment: r.payment
      ? {
          id: r.payment.id,
          amountCents: Number(r.payment.amount_cents),
          currency: r.payment.currency,
          status: r.payment.status,
          region: r.payment.region,
          correlationId: r.payment.correlation_id,
          createdAt: new Date(r.payment.created_at).toISOString(),
        }
      : null,
  };
}

const SELECT_ORDER = `
  SELECT o.*, (SELECT to_jsonb(p) FROM shop.payments p WHERE p.order_id = o.id ORDER BY p.created_at LIMIT 1) AS payment
    FROM shop.orders o`;

async function loadOrder(db: Queryable, id: string, forUpdate = false): Promise<OrderRow | undefined> {
  const { rows } = await db.query<OrderRow>(`${SELECT_ORDER} WHERE o.id = $1${forUpdate ? ' FOR UPDATE OF o' : ''}`, [id]);
  return rows[0];
}

function orderId(req: KitRequest): string {
  const id = req.params.id ?? '';
  if (!UUID.test(id)) throw new HttpProblem('not-found', `no order ${JSON.stringify(id.slice(0, 80))} (order ids are uuids)`);
  return id.toLowerCase();
}

async function createOrder(req: KitRequest): Promise<KitReply> {
  const body = parseBody(createOrderBody, req.body);
  const customer = body.customer ?? req.session?.userId;
  if (!customer) throw new HttpProblem('validation', 'customer: required (or log in and it defaults to your user)', { extra: { errors: [{ path: 'customer', message: 'required' }] } });
  if (!body.items && body.amountCents === undefined) {
    throw new HttpProblem('validation', 'give "items" or "amountCents"', { extra: { errors: [{ path: '(body)', message: 'give "items" or "amountCents"' }] } });
  }
  const sum = body.items?.reduce((acc, i) => acc + i.qty * i.priceCents, 0);
  if (sum !== undefined && body.amountCents !== undefined && sum !== body.amountCents) {
    throw new HttpProblem('validation', `amountCents ${body.amountCents} does not match the items' total ${sum}`);
  }
  const amount = body.amountCents ?? sum!;
  if (amount > MAX_AMOUNT_CENTS) throw new HttpProblem('validation', `the total ${amount} exceeds ${MAX_AMOUNT_CENTS}`);
  const id = req.entityId('order');
  const c = req.context.correlationId;
  const { rowCount } = await req.db.query(
    `INSERT INTO shop.orders (id, customer, items, amount_cents, currency, status, idempotency_key, client_scope,
                              correlation_id, region, created_at, updated_at, updated_correlation_id, updated_region)
     VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, $8, $9, now(), now(), $8, $9)
     ON CONFLICT (id) DO NOTHING`,
    [id, customer, body.items ? JSON.stringify(body.items) : null, amount, body.currency, req.idempotencyKey, req.scope, c, req.region],
  );
  const order = (await loadOrder(req.db, id))!;
  if (rowCount === 0) {
    // The id exists: the key was used before (its stored response expired) or the retry raced a replicated copy.
    if (order.customer !== customer || Number(order.amount_cents) !== amount || order.currency !== body.currency) {
      throw new HttpProblem('conflict', `order ${id} already exists with different contents; use a new Idempotency-Key for a new order`);
    }
    req.log.info({ orderId: id }, 'order already existed; answering with it');
    return { status: 200, body: view(order), headers: { location: `/v1/orders/${id}` } };
  }
  req.log.info({ orderId: id, amountCents: amount }, 'order created');
  return { status: 201, body: view(order), headers: { location: `/v1/orders/${id}` } };
}

async function payOrder(req: KitRequest): Promise<KitReply> {
  const id = orderId(req);
  if (req.body !== undefined) parseBody(z.object({}).strict(), req.body);
  const order = await loadOrder(req.db, id, true);
  if (!order) throw new HttpProblem('not-found', `no order ${id} in region ${req.region} (if it was just created elsewhere, retry with the same key)`);
  const paymentId = uuidv5(`payment\n${id}`, TANDEM_ID_NAMESPACE);
  if (order.status === 'paid' && order.payment && order.payment.id !== paymentId) {
    throw new HttpProblem('conflict', `order ${id} is already paid`);
  }
  const c = req.context.correlationId;
  await req.db.query(
    `INSERT INTO shop.payments (id, order_id, amount_cents, currency, status, idempotency_key, client_scope, correlation_id, region, created_at)
     VALUES ($1, $2, $3, $4, 'captured', $5, $6, $7, $8, now())
     ON CONFLICT (id) DO NOTHING`,
    [paymentId, id, order.amount_cents, order.currency, req.idempotencyKey, req.scope, c, req.region],
  );
  if (order.status !== 'paid') {
    await req.db.query(
      `UPDATE shop.orders SET status = 'paid', updated_at = now(), updated_correlation_id = $2, updated_region = $3 WHERE id = $1`,
      [id, c, req.region],
    );
  }
  req.log.info({ orderId: id, paymentId }, 'order paid');
  return { status: 200, body: view((await loadOrder(req.db, id))!) };
}

async function getOrder(req: KitRequest): Promise<KitReply> {
  const id = orderId(req);
  const order = await loadOrder(req.db, id);
  if (!order) throw new HttpProblem('not-found', `no order ${id} in region ${req.region}`);
  return { body: view(order) };
}

async function listOrders(req: KitRequest): Promise<KitReply> {
  const customer = req.query.get('customer');
  if (!customer) throw new HttpProblem('validation', 'query parameter "customer" is required');
  if (customer.length > 200) throw new HttpProblem('validation', 'customer: at most 200 characters');
  const limitText = req.query.get('limit') ?? '50';
  const limit = Number(limitText);
  if (!Number.isInteger(limit) || limit < 1 || limit > 200) throw new HttpProblem('validation', `limit must be an integer 1..200 (found ${JSON.stringify(limitText.slice(0, 20))})`);
  const { rows } = await req.db.query<OrderRow>(`${SELECT_ORDER} WHERE o.customer = $1 ORDER BY o.created_at DESC, o.id LIMIT $2`, [customer, limit]);
  return { body: { customer, orders: rows.map(view) } };
}

async function login(req: KitRequest): Promise<KitReply> {
  if (!req.sessions) throw new HttpProblem('sessions-disabled', 'this service has no session keys configured (app.sessionKeys)');
  const { user } = parseBody(loginBody, req.body);
  const { token, session } = await req.sessions.create(req.db, user, { loginRegion: req.region }, req.context.correlationId);
  req.log.info({ sessionId: session.sessionId }, 'logged in');
  return { status: 201, body: { token, sessionId: session.sessionId, user: session.userId, expiresAt: session.expiresAt.toISOString() } };
}

async function logout(req: KitRequest): Promise<KitReply> {
  const session = req.session!;
  await req.sessions!.revoke(req.db, session, req.context.correlationId);
  req.log.info({ sessionId: session.sessionId }, 'logged out');
  return { status: 200, body: { loggedOut: true, sessionId: session.sessionId } };
}

function me(req: KitRequest): KitReply {
  const s = req.session!;
  return { body: { user: s.userId, sessionId: s.sessionId, expiresAt: s.expiresAt.toISOString(), source: s.source, data: s.data, region: req.region } };
}

/** The reference service's routes. */
export function shopRoutes(): KitRoute[] {
  return [
    { method: 'POST', path: '/v1/orders', idempotent: true, handler: createOrder },
    { method: 'GET', path: '/v1/orders', handler: listOrders },
    { method: 'GET', path: '/v1/orders/:id', handler: getOrder },
    { method: 'POST', path: '/v1/orders/:id/pay', idempotent: true, handler: payOrder },
    { method: 'POST', path: '/v1/login', write: true, session: 'none', handler: login },
    { method: 'POST', path: '/v1/logout', write: true, session: 'required', handler: logout },
    { method: 'GET', path: '/v1/me', session: 'required', handler: me },
  ];
}
