/**
 * Webhook notifications with a Slack-compatible payload (`text` plus
 * `attachments` coloured by severity), used by the controller and the alert
 * evaluator. Delivery retries with backoff; a dead receiver never blocks the
 * caller.
 */
import type { Logger } from './log.ts';
import { sleep } from './lifecycle.ts';

/** How bad: drives the colour and the emoji-free prefix. */
export type Severity = 'info' | 'warning' | 'critical' | 'resolved';

/** One notification. `key` identifies the event for de-duplication by receivers. */
export interface Notification {
  key: string;
  severity: Severity;
  title: string;
  text: string;
  /** Extra fields shown as a small table. */
  fields?: Record<string, string | number | boolean>;
  at?: Date;
}

const COLOR: Record<Severity, string> = { info: '#439fe0', warning: '#daa038', critical: '#d00000', resolved: '#2eb886' };

/** The JSON body sent to a webhook: Slack's incoming-webhook shape, plus tandem's own fields. */
export function webhookPayload(n: Notification, source: string): Record<string, unknown> {
  const at = n.at ?? new Date();
  return {
    text: `[${n.severity.toUpperCase()}] ${n.title}`,
    attachments: [
      {
        color: COLOR[n.severity],
        title: n.title,
        text: n.text,
        fields: Object.entries(n.fields ?? {}).map(([title, value]) => ({ title, value: String(value), short: true })),
        footer: source,
        ts: Math.floor(at.getTime() / 1000),
      },
    ],
    tandem: { key: n.key, severity: n.severity, title: n.title, text: n.text, fields: n.fields ?? {}, at: at.toISOString(), source },
  };
}

/** Sends notifications to a list of webhook URLs. */
export class WebhookNotifier {
  readonly #urls: string[];
  readonly #source: string;
  readonly #log: Logger;
  #pending = new Set<Promise<void>>();

  constructor(urls: string[], source: string, log: Logger) {
    this.#urls = urls;
    this.#source = source;
    this.#log = log;
  }

  /** Queue delivery to every webhook; returns at once. */
  send(n: Notification): void {
    for (const url of this.#urls) {
      const p = this.#deliver(url, n).finally(() => this.#pending.delete(p));
      this.#pending.add(p);
    }
  }

  /** Wait for queued deliveries (used on shutdown and in tests). */
  async flush(): Promise<void> {
    await Promise.all([...this.#pending]);
  }

  async #deliver(url: string, n: Notification): Promise<void> {
    const body = JSON.stringify(webhookPayload(n, this.#source));
    for (let attempt = 1; attempt <= 4; attempt++) {
      try {
        const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body, signal: AbortSignal.timeout(5_000) });
        await res.arrayBuffer();
        if (res.ok) return;
        if (res.status < 500 && res.status !== 429) {
          this.#log.warn({ url: redactUrl(url), status: res.status, key: n.key }, 'webhook refused the notification');
          return;
        }
      } catch (err) {
        this.#log.debug({ err, url: redactUrl(url), attempt }, 'webhook delivery failed');
      }
      await sleep(250 * 2 ** attempt);
    }
    this.#log.warn({ url: redactUrl(url), key: n.key }, 'webhook delivery gave up after 4 attempts');
  }
}

/** Webhook URLs often carry a secret in the path (Slack); log only scheme and host. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    return `${u.protocol}//${u.host}/…`;
  } catch {
    return '(invalid url)';
  }
}
