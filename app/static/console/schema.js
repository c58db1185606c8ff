// What the console knows of the API comes from its schema: by introspection where the
// server allows it (development), else from schema.json bundled with this page
// (`crunchql export-schema --format introspection`, checked by a test to be current).
import { request } from './api.js';

const TYPE_REF = `fragment R on __Type { kind name ofType { kind name ofType { kind name
  ofType { kind name ofType { kind name ofType { kind name } } } } } }`;
const INTROSPECTION = `query ConsoleSchema { __schema { types { kind name description
  fields { name type { ...R } } inputFields { name description defaultValue type { ...R } }
  enumValues { name } possibleTypes { name } } } } ${TYPE_REF}`;

const SCALARS = new Set(['Int', 'Float', 'BigInt', 'String', 'Boolean', 'ID', 'JSON', 'DateTime']);

export class Schema {
  constructor(raw, source) {
    this.source = source;
    this.types = new Map(raw.__schema.types.map((type) => [type.name, type]));
  }

  static async load() {
    try {
      return new Schema(await request(INTROSPECTION), 'introspection');
    } catch {
      const response = await fetch('/console/schema.json');
      return new Schema(await response.json(), 'bundled');
    }
  }

  has(typeName, fieldName) {
    const type = this.types.get(typeName);
    return Boolean(type && (type.fields || []).some((field) => field.name === fieldName));
  }

  // The kinds: the fields of CalculationInput (@oneOf), each with its own input type.
  kinds() {
    const input = this.types.get('CalculationInput');
    return (input ? input.inputFields : []).map((field) => {
      const typeName = unwrap(field.type).name;
      const type = this.types.get(typeName) || {};
      return { name: field.name, typeName, description: type.description || '' };
    });
  }

  fields(typeName) {
    const type = this.types.get(typeName);
    const inputFields = type ? type.inputFields : [];
    const bounds = parseBounds(type && type.description, inputFields.map((field) => field.name));
    return inputFields.map((field) => {
      const base = unwrap(field.type);
      const enumType = base.kind === 'ENUM' ? this.types.get(base.name) : null;
      return {
        name: field.name,
        required: field.type.kind === 'NON_NULL' && (field.defaultValue == null || field.defaultValue === 'null'),
        type: base.name,
        enumValues: enumType ? enumType.enumValues.map((value) => value.name) : null,
        // Introspection gives GraphQL literals: "null" is no default at all.
        defaultValue: field.defaultValue === 'null' ? null : field.defaultValue,
        description: field.description,
        ...(bounds[field.name] || {}),
      };
    });
  }

  // A selection of every member of CalculationResult (kMeans included where the server
  // has it): its scalar fields and lists of them, but those in `omit`.
  resultSelection(omit = []) {
    const union = this.types.get('CalculationResult');
    const members = union ? union.possibleTypes.map((member) => member.name) : [];
    const parts = members.map((name) => {
      const type = this.types.get(name);
      const names = (type.fields || [])
        .filter((field) => {
          const base = unwrap(field.type);
          return (base.kind === 'SCALAR' || base.kind === 'ENUM') && !omit.includes(field.name);
        })
        .map((field) => field.name);
      return `... on ${name} { ${names.join(' ')} }`;
    });
    return `{ __typename ${parts.join(' ')} }`;
  }
}

export function unwrap(ref) {
  let type = ref;
  while (type.ofType) type = type.ofType;
  return type;
}

export function isNumber(typeName) {
  return typeName === 'Int' || typeName === 'Float' || typeName === 'BigInt';
}

export function isScalar(typeName) {
  return SCALARS.has(typeName);
}

function number(text) {
  const power = /^(-?\d+(?:\.\d+)?)\^(\d+)$/.exec(text);
  if (power) return Math.pow(Number(power[1]), Number(power[2]));
  return Number(text);
}

// Bounds as the input types state them in their descriptions, e.g.
// "1 <= samples <= 10^10", "1 <= width, height <= 4096", "steps (...) 1 ..= 10^4",
// "spot, strike > 0". `names` are the type's field names.
export function parseBounds(description, names) {
  const bounds = {};
  if (!description) return bounds;
  const known = new Set(names);
  const value = '(-?\\d+(?:\\.\\d+)?(?:\\^\\d+)?)';
  const between = new RegExp(`${value}\\s*<=\\s*([A-Za-z][\\w, ]*?)\\s*<=\\s*${value}`, 'g');
  for (const match of description.matchAll(between)) {
    for (const name of match[2].split(',').map((part) => part.trim())) {
      if (known.has(name)) bounds[name] = { min: number(match[1]), max: number(match[3]) };
    }
  }
  // Clauses: "a; b" or "a. b" (not the point of 0.05).
  for (const clause of description.split(/;|\.\s/)) {
    const mentioned = (clause.match(/[A-Za-z]\w*/g) || []).filter((word) => known.has(word));
    const range = new RegExp(`${value}\\s*\\.\\.=\\s*${value}`).exec(clause);
    if (range) {
      const before = mentioned.filter((name) => clause.indexOf(name) < range.index);
      const name = before[before.length - 1];
      if (name && !bounds[name]) bounds[name] = { min: number(range[1]), max: number(range[2]) };
    }
    const positive = /^(.*?)>\s*0\b/.exec(clause);
    if (positive) {
      for (const name of mentioned.filter((word) => positive[1].includes(word))) {
        if (!bounds[name]) bounds[name] = { exclusiveMin: 0 };
      }
    }
  }
  return bounds;
}
