/**
 * ISO 3166-2:IN subdivision codes and the names geo databases use for them.
 *
 * Source: ISO 3166-2:IN (Online Browsing Platform, iso.org/obp) and its 2019,
 * 2020 and 2023 newsletters. Several codes changed: Telangana was given `TG`
 * (2014 editions and some vendors still use `TS`), Chhattisgarh CT → CG,
 * Odisha OR → OD, Uttarakhand UT → UK (2023), and Dadra and Nagar Haveli plus
 * Daman and Diu merged into DH (2020). Every old code is accepted as an alias
 * and mapped to the current one, so rules and databases of any edition agree.
 */

/** One state or union territory: current code, aliases, names. The first name is canonical. */
export interface IndianSubdivision {
  code: string;
  aliases: readonly string[];
  names: readonly string[];
}

/** The table, in code order. */
export const INDIA_SUBDIVISIONS: readonly IndianSubdivision[] = [
  { code: 'AN', aliases: [], names: ['Andaman and Nicobar Islands', 'Andaman and Nicobar'] },
  { code: 'AP', aliases: [], names: ['Andhra Pradesh'] },
  { code: 'AR', aliases: [], names: ['Arunachal Pradesh'] },
  { code: 'AS', aliases: [], names: ['Assam'] },
  { code: 'BR', aliases: [], names: ['Bihar'] },
  { code: 'CG', aliases: ['CT'], names: ['Chhattisgarh', 'Chhatisgarh'] },
  { code: 'CH', aliases: [], names: ['Chandigarh'] },
  {
    code: 'DH',
    aliases: ['DN', 'DD'],
    names: ['Dadra and Nagar Haveli and Daman and Diu', 'Dadra and Nagar Haveli', 'Daman and Diu'],
  },
  { code: 'DL', aliases: [], names: ['Delhi', 'National Capital Territory of Delhi', 'NCT of Delhi'] },
  { code: 'GA', aliases: [], names: ['Goa'] },
  { code: 'GJ', aliases: [], names: ['Gujarat'] },
  { code: 'HP', aliases: [], names: ['Himachal Pradesh'] },
  { code: 'HR', aliases: [], names: ['Haryana'] },
  { code: 'JH', aliases: [], names: ['Jharkhand'] },
  { code: 'JK', aliases: [], names: ['Jammu and Kashmir'] },
  { code: 'KA', aliases: [], names: ['Karnataka'] },
  { code: 'KL', aliases: [], names: ['Kerala'] },
  { code: 'LA', aliases: [], names: ['Ladakh'] },
  { code: 'LD', aliases: [], names: ['Lakshadweep'] },
  { code: 'MH', aliases: [], names: ['Maharashtra'] },
  { code: 'ML', aliases: [], names: ['Meghalaya'] },
  { code: 'MN', aliases: [], names: ['Manipur'] },
  { code: 'MP', aliases: [], names: ['Madhya Pradesh'] },
  { code: 'MZ', aliases: [], names: ['Mizoram'] },
  { code: 'NL', aliases: [], names: ['Nagaland'] },
  { code: 'OD', aliases: ['OR'], names: ['Odisha', 'Orissa'] },
  { code: 'PB', aliases: [], names: ['Punjab'] },
  { code: 'PY', aliases: [], names: ['Puducherry', 'Pondicherry'] },
  { code: 'RJ', aliases: [], names: ['Rajasthan'] },
  { code: 'SK', aliases: [], names: ['Sikkim'] },
  { code: 'TG', aliases: ['TS'], names: ['Telangana'] },
  { code: 'TN', aliases: [], names: ['Tamil Nadu'] },
  { code: 'TR', aliases: [], names: ['Tripura'] },
  { code: 'UK', aliases: ['UT'], names: ['Uttarakhand', 'Uttaranchal'] },
  { code: 'UP', aliases: [], names: ['Uttar Pradesh'] },
  { code: 'WB', aliases: [], names: ['West Bengal'] },
];

const byCode = new Map<string, IndianSubdivision>();
const byName = new Map<string, IndianSubdivision>();
for (const s of INDIA_SUBDIVISIONS) {
  for (const c of [s.code, ...s.aliases]) byCode.set(c, s);
  for (const n of s.names) byName.set(normaliseName(n), s);
}

/** Compare names loosely: case, "&" vs "and", punctuation and spacing do not matter. */
export function normaliseName(name: string): string {
  return name
    .toLowerCase()
    .replace(/&/g, ' and ')
    .replace(/[^a-z0-9]+/g, ' ')
    .trim();
}

/** The current ISO code (without "IN-") for a code or alias, e.g. "TS" → "TG". */
export function indianCode(code: string): string | undefined {
  return byCode.get(code.toUpperCase())?.code;
}

/** The current ISO code for a state name as databases spell it, e.g. "Telangana" → "TG". */
export function indianCodeForName(name: string): string | undefined {
  return byName.get(normaliseName(name))?.code;
}

/** The canonical name for a code or alias. */
export function indianName(code: string): string | undefined {
  return byCode.get(code.toUpperCase())?.names[0];
}
