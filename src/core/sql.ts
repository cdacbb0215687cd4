/**
 * The one place SQL identifiers are quoted. Values always go as bound parameters.
 */

/** Quote one identifier: `Order "Items"` → `"Order ""Items"""`. */
export function quoteIdent(name: string): string {
  if (name.length === 0) throw new TypeError('empty SQL identifier');
  if (name.includes('\u0000')) throw new TypeError('SQL identifier contains a NUL byte');
  return `"${name.replaceAll('"', '""')}"`;
}

/** A schema-qualified table name as an object. */
export interface TableName {
  schema: string;
  table: string;
}

/** Quote a schema-qualified name: `"public"."orders"`. */
export function quoteTable(t: TableName): string {
  return `${quoteIdent(t.schema)}.${quoteIdent(t.table)}`;
}

/**
 * Parse `schema.table` as written in config, honouring double quotes so that
 * names with dots, spaces or quotes can be written: `"My Schema"."a.b"`.
 * An unqualified name gets schema `public`.
 */
export function parseTableName(text: string): TableName {
  const parts: string[] = [];
  let i = 0;
  while (i < text.length) {
    if (text[i] === '"') {
      let out = '';
      i++;
      for (;;) {
        if (i >= text.length) throw new TypeError(`unterminated quoted identifier in ${JSON.stringify(text)}`);
        if (text[i] === '"') {
          if (text[i + 1] === '"') {
            out += '"';
            i += 2;
            continue;
          }
          i++;
          break;
        }
        out += text[i++];
      }
      parts.push(out);
    } else {
      const dot = text.indexOf('.', i);
      const end = dot === -1 ? text.length : dot;
      const raw = text.slice(i, end).trim();
      if (raw.length === 0) throw new TypeError(`empty identifier in ${JSON.stringify(text)}`);
      parts.push(raw);
      i = end;
    }
    if (i < text.length) {
      if (text[i] !== '.') throw new TypeError(`expected "." after identifier in ${JSON.stringify(text)}`);
      i++;
    }
  }
  if (parts.length === 1) return { schema: 'public', table: parts[0]! };
  if (parts.length === 2) return { schema: parts[0]!, table: parts[1]! };
  throw new TypeError(`expected schema.table, found ${JSON.stringify(text)}`);
}

/** The canonical text of a table name, used as its identity across regions. */
export function tableKey(t: TableName): string {
  return `${quoteIdent(t.schema)}.${quoteIdent(t.table)}`;
}
