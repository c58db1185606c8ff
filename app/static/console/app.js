// The crunchql web console: sign in, submit (forms generated from the schema), a live list
// of the caller's calculations on ONE myCalculationUpdates subscription, a detail view
// with the live convergence chart and the rendered results, and an admin panel.
import { h, render } from './vendor/preact.module.js';
import { useCallback, useEffect, useMemo, useRef, useState } from './vendor/hooks.module.js';
import htm from './vendor/htm.module.js';
import {
  ApiError, loadSession, onReconnect, onSession, request, signIn, signOut, subscribe,
} from './api.js';
import { CentroidScatter, ConvergenceChart } from './charts.js';
import { Schema, isNumber } from './schema.js';

const html = htm.bind(h);
const RANK = { QUEUED: 0, RUNNING: 1, SUCCEEDED: 2, FAILED: 2, CANCELLED: 2 };
const ACTIVE = new Set(['QUEUED', 'RUNNING']);
const LIST_SIZE = 50;

function rowFields(schema, omit) {
  const result = schema.resultSelection(omit);
  return `id kind status progress input error attempts createdAt startedAt finishedAt
    partialResult ${result} result ${result}`;
}

function age(iso, now) {
  const seconds = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  if (seconds < 60) return `${seconds} s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return `${Math.floor(seconds / 86400)} d ago`;
}

function estimateOf(value) {
  if (!value || value.standardError == null) return null;
  const estimate = value.estimate ?? value.price;
  return estimate == null ? null : { value: estimate, se: value.standardError };
}

// ------------------------------------------------------------------ calculations state

// Newer: a later status, or the same status with no less progress. Progress never steps
// back on screen (a re-run starts again from zero; events may overtake a query).
function merge(old, next) {
  if (!old) return next;
  if (RANK[next.status] < RANK[old.status]) return old;
  if (RANK[next.status] === RANK[old.status] && next.progress < old.progress) {
    return { ...next, progress: old.progress };
  }
  return next;
}

function useCalculations(schema) {
  const [rows, setRows] = useState(new Map());
  const histories = useRef(new Map());
  const [, setTick] = useState(0);

  const take = useCallback((calculation) => {
    const point = estimateOf(calculation.partialResult);
    if (point && calculation.status === 'RUNNING') {
      const history = histories.current.get(calculation.id) || [];
      const last = history[history.length - 1];
      if (!last || last.value !== point.value || last.se !== point.se) {
        histories.current.set(calculation.id, [
          ...history, { t: performance.now() / 1000, ...point },
        ]);
      }
    }
    setRows((current) => {
      const next = new Map(current);
      next.set(calculation.id, merge(current.get(calculation.id), calculation));
      return next;
    });
  }, []);

  useEffect(() => {
    if (!schema) return undefined;
    const fields = rowFields(schema, ['png']);
    const reload = async () => {
      const data = await request(
        `query($first: Int) { calculations(first: $first) { edges { node { ${fields} } } } }`,
        { first: LIST_SIZE },
      );
      data.calculations.edges.forEach((edge) => take(edge.node));
      setTick((n) => n + 1);
    };
    // Subscribe first, then query: nothing can slip between the two.
    const unsubscribe = subscribe(
      `subscription { myCalculationUpdates { ${fields} } }`,
      {},
      { next: (data) => take(data.myCalculationUpdates), error: () => {} },
    );
    reload().catch(() => {});
    const stop = onReconnect(() => reload().catch(() => {}));
    return () => {
      unsubscribe();
      stop();
    };
  }, [schema, take]);

  const sorted = useMemo(
    () => [...rows.values()].sort((a, b) => Date.parse(b.createdAt) - Date.parse(a.createdAt)),
    [rows],
  );
  return { rows: sorted, byId: rows, histories: histories.current, take };
}

// ------------------------------------------------------------------------- sign in

function SignIn({ onError, error }) {
  const [email, setEmail] = useState('');
  const [password, setPassword] = useState('');
  const [busy, setBusy] = useState(false);
  const run = (mutation) => async (event) => {
    event.preventDefault();
    setBusy(true);
    onError(null);
    try {
      await signIn(mutation, email.trim(), password);
    } catch (failure) {
      onError(failure.message);
    } finally {
      setBusy(false);
    }
  };
  return html`<form class="card signin" onSubmit=${run('login')}>
    <h2>Sign in to crunchql</h2>
    <label for="email">Email</label>
    <input id="email" type="email" autocomplete="username" required value=${email}
      onInput=${(e) => setEmail(e.target.value)} />
    <label for="password">Password</label>
    <input id="password" type="password" autocomplete="current-password" required
      value=${password} onInput=${(e) => setPassword(e.target.value)} />
    ${error && html`<p class="error" role="alert">${error}</p>`}
    <div class="actions">
      <button type="submit" disabled=${busy}>Sign in</button>
      <button type="button" class="secondary" disabled=${busy} onClick=${run('register')}>
        Create account</button>
    </div>
  </form>`;
}

// ------------------------------------------------------------------------ submit form

function hint(field) {
  const parts = [field.required ? 'required' : 'optional'];
  if (field.defaultValue != null) parts.push(`default ${field.defaultValue}`);
  if (field.min != null && field.max != null) parts.push(`${field.min} … ${field.max}`);
  else if (field.exclusiveMin != null) parts.push(`> ${field.exclusiveMin}`);
  parts.push(field.type);
  return parts.join(' · ');
}

function validate(fields, values) {
  const errors = {};
  const input = {};
  for (const field of fields) {
    const raw = (values[field.name] ?? '').trim();
    if (!raw) {
      if (field.required) errors[field.name] = `${field.name} is required.`;
      continue;
    }
    if (isNumber(field.type)) {
      const number = Number(raw);
      if (!Number.isFinite(number)) errors[field.name] = `${field.name} must be a number.`;
      else if (field.type !== 'Float' && !Number.isInteger(number)) {
        errors[field.name] = `${field.name} must be a whole number.`;
      } else if (field.min != null && number < field.min) {
        errors[field.name] = `${field.name} must be at least ${field.min}.`;
      } else if (field.max != null && number > field.max) {
        errors[field.name] = `${field.name} must be at most ${field.max}.`;
      } else if (field.exclusiveMin != null && number <= field.exclusiveMin) {
        errors[field.name] = `${field.name} must be greater than ${field.exclusiveMin}.`;
      } else input[field.name] = field.type === 'BigInt' ? raw : number;
    } else if (field.type === 'Boolean') input[field.name] = raw === 'true';
    else input[field.name] = raw;
  }
  return { errors, input };
}

// The field a BAD_USER_INPUT error is about: extensions.field ("monteCarloPi.samples"),
// or the path in a variable coercion message ("... at .monteCarloPi.samples").
function errorField(error, kind) {
  if (error.field && error.field.startsWith(`${kind}.`)) return error.field.slice(kind.length + 1);
  const match = /at \.(\w+)\.(\w+)/.exec(error.message);
  return match && match[1] === kind ? match[2] : null;
}

function SubmitForm({ schema, onSubmitted }) {
  const kinds = useMemo(() => schema.kinds(), [schema]);
  const [kind, setKind] = useState(kinds.length ? kinds[0].name : '');
  const [values, setValues] = useState({});
  const [errors, setErrors] = useState({});
  const [formError, setFormError] = useState(null);
  const [busy, setBusy] = useState(false);
  const selected = kinds.find((k) => k.name === kind);
  const fields = useMemo(() => (selected ? schema.fields(selected.typeName) : []), [selected]);

  const submit = async (event) => {
    event.preventDefault();
    const checked = validate(fields, values);
    setErrors(checked.errors);
    setFormError(null);
    if (Object.keys(checked.errors).length) return;
    setBusy(true);
    try {
      const data = await request(
        `mutation($i: CalculationInput!) { submitCalculation(input: $i) {
          ${rowFields(schema, ['png'])} } }`,
        { i: { [kind]: checked.input } },
      );
      onSubmitted(data.submitCalculation);
    } catch (error) {
      const field = error instanceof ApiError ? errorField(error, kind) : null;
      if (field && fields.some((f) => f.name === field)) setErrors({ [field]: error.message });
      else setFormError(error.message);
    } finally {
      setBusy(false);
    }
  };

  return html`<form class="card submit" onSubmit=${submit} novalidate>
    <h2>New calculation</h2>
    <label for="kind">Kind</label>
    <select id="kind" value=${kind} onChange=${(e) => {
      setKind(e.target.value);
      setValues({});
      setErrors({});
    }}>
      ${kinds.map((k) => html`<option value=${k.name}>${k.name}</option>`)}
    </select>
    ${selected && html`<p class="help">${selected.description}</p>`}
    <div class="fields">
      ${fields.map((field) => {
        const id = `field-${field.name}`;
        const value = values[field.name] ?? '';
        const set = (e) => setValues({ ...values, [field.name]: e.target.value });
        const described = `${id}-hint${errors[field.name] ? ` ${id}-error` : ''}`;
        const control = field.enumValues
          ? html`<select id=${id} value=${value} onChange=${set} aria-describedby=${described}>
              ${!field.required && html`<option value="">(default)</option>`}
              ${field.required && html`<option value="">choose…</option>`}
              ${field.enumValues.map((name) => html`<option value=${name}>${name}</option>`)}
            </select>`
          : html`<input id=${id} value=${value} onInput=${set} aria-describedby=${described}
              inputmode=${isNumber(field.type) ? (field.type === 'Float' ? 'decimal' : 'numeric') : 'text'}
              aria-invalid=${errors[field.name] ? 'true' : 'false'}
              placeholder=${field.defaultValue ?? (field.required ? '' : 'default')} />`;
        return html`<div class="field">
          <label for=${id}>${field.name}</label>
          ${control}
          <small id=${`${id}-hint`} class="hint">${hint(field)}</small>
          ${errors[field.name] &&
          html`<small id=${`${id}-error`} class="error" role="alert">${errors[field.name]}</small>`}
        </div>`;
      })}
    </div>
    ${formError && html`<p class="error" role="alert">${formError}</p>`}
    <button type="submit" disabled=${busy || !selected}>Submit</button>
  </form>`;
}

// --------------------------------------------------------------------------- the list

function ProgressBar({ value, label }) {
  const percent = Math.round(Math.max(0, Math.min(1, value)) * 100);
  return html`<div class="progress" role="progressbar" aria-label=${label}
      aria-valuemin="0" aria-valuemax="100" aria-valuenow=${percent}>
    <div class="fill" style=${{ width: `${percent}%` }}></div>
    <span class="percent">${percent}%</span>
  </div>`;
}

function CalculationRow({ calculation, now, selected, onSelect, onAction }) {
  const short = calculation.id.slice(0, 8);
  const estimate = estimateOf(calculation.result || calculation.partialResult);
  return html`<li class=${`row ${selected ? 'selected' : ''}`} data-id=${calculation.id}
      data-status=${calculation.status}>
    <span class="kind">${calculation.kind}</span>
    <span class=${`status ${calculation.status.toLowerCase()}`}>${calculation.status}</span>
    <${ProgressBar} value=${calculation.progress} label=${`Progress of ${calculation.kind} ${short}`} />
    <span class="estimate">${estimate ? `${estimate.value.toPrecision(8)} ± ${(2 * estimate.se).toPrecision(2)}` : ''}</span>
    <time datetime=${calculation.createdAt}>${age(calculation.createdAt, now)}</time>
    <span class="actions">
      <button type="button" class="secondary" aria-pressed=${selected ? 'true' : 'false'}
        onClick=${() => onSelect(calculation.id)}>Details</button>
      ${ACTIVE.has(calculation.status) &&
      html`<button type="button" class="danger" onClick=${() => onAction('cancel', calculation)}>
        Cancel</button>`}
      <button type="button" class="secondary" onClick=${() => onAction('resubmit', calculation)}>
        Resubmit</button>
    </span>
  </li>`;
}

function CalculationList({ rows, selectedId, onSelect, onAction, error }) {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    const timer = setInterval(() => setNow(Date.now()), 1000);
    return () => clearInterval(timer);
  }, []);
  return html`<section class="card list" aria-labelledby="list-title">
    <h2 id="list-title">Your calculations</h2>
    ${error && html`<p class="error" role="alert">${error}</p>`}
    ${rows.length === 0 && html`<p class="help">Nothing yet: submit one.</p>`}
    <ul class="rows">
      ${rows.map(
        (calculation) => html`<${CalculationRow} key=${calculation.id} calculation=${calculation}
          now=${now} selected=${calculation.id === selectedId} onSelect=${onSelect}
          onAction=${onAction} />`,
      )}
    </ul>
  </section>`;
}

// ------------------------------------------------------------------------- the detail

function ResultView({ result }) {
  if (!result) return null;
  const entries = Object.entries(result).filter(
    ([name]) => !['__typename', 'png', 'centroids'].includes(name),
  );
  return html`<div class="result">
    <dl>${entries.map(([name, value]) => html`<dt>${name}</dt><dd>${String(value)}</dd>`)}</dl>
    ${result.png &&
    html`<img class="render" alt="Mandelbrot render" src=${`data:image/png;base64,${result.png}`}
      width=${result.width} height=${result.height} />`}
    ${result.relativeEnergyError != null &&
    html`<p class="energy">Relative energy error: <strong>${result.relativeEnergyError.toExponential(3)}</strong>
      (from ${result.initialEnergy} to ${result.finalEnergy})</p>`}
    ${Array.isArray(result.centroids) && html`<${CentroidScatter} centroids=${result.centroids} />`}
  </div>`;
}

function Detail({ schema, calculation, history }) {
  const [full, setFull] = useState(null);
  const finished = calculation.status === 'SUCCEEDED';
  useEffect(() => {
    setFull(null);
    if (!finished) return;
    // The list leaves out big fields (the PNG): read the whole result once.
    request(`query($id: ID!) { calculation(id: $id) { id result ${schema.resultSelection()} } }`, {
      id: calculation.id,
    })
      .then((data) => data.calculation && setFull(data.calculation.result))
      .catch(() => {});
  }, [calculation.id, finished]);
  const result = full || calculation.result;
  const final = estimateOf(calculation.result);
  const converges = history.length > 0 || estimateOf(calculation.partialResult) || final;
  const label = (calculation.result || calculation.partialResult || {}).price != null ? 'price' : 'estimate';
  return html`<section class="card detail" aria-labelledby="detail-title">
    <h2 id="detail-title">${calculation.kind} <code>${calculation.id}</code></h2>
    <p>Status <strong>${calculation.status}</strong>, ${Math.round(calculation.progress * 100)} %
      ${calculation.attempts > 1 && html`, ${calculation.attempts} attempts`}</p>
    ${calculation.error && html`<p class="error">${calculation.error}</p>`}
    <h3>Input</h3>
    <pre>${JSON.stringify(calculation.input, null, 2)}</pre>
    ${converges &&
    html`<h3>Convergence</h3>
      <${ConvergenceChart} points=${history} final=${final ? final.value : null} label=${label} />
      ${final && html`<p>Final ${label}: <strong>${final.value}</strong> ± ${(2 * final.se).toPrecision(3)} (2 SE)</p>`}`}
    ${result && html`<h3>Result</h3><${ResultView} result=${result} />`}
  </section>`;
}

// -------------------------------------------------------------------------- the admin

function Admin({ schema }) {
  const [state, setState] = useState(null);
  useEffect(() => {
    const load = async () => {
      const next = {};
      if (schema.has('Query', 'users')) {
        const data = await request('query { users(first: 50) { edges { node { id email role } } } }');
        next.users = data.users.edges.map((edge) => edge.node);
      }
      if (schema.has('Query', 'allCalculations')) {
        // The queue through the API, not /metrics (which a proxy rightly keeps private):
        // the calculations waiting for a worker, counted up to 100.
        const data = await request(`query {
          recent: allCalculations(first: 20) { edges { node {
            id kind status progress createdAt owner { email } } } }
          queued: allCalculations(first: 100, status: QUEUED) {
            edges { node { id } } pageInfo { hasNextPage } } }`);
        next.calculations = data.recent.edges.map((edge) => edge.node);
        next.queued = `${data.queued.edges.length}${data.queued.pageInfo.hasNextPage ? '+' : ''}`;
      }
      try {
        const ready = await (await fetch('/readyz')).json();
        // {embedded, alive} beside the checks (older servers: inside them).
        next.workers = ready.workers || (ready.checks && ready.checks.workers);
      } catch {
        next.workers = null;
      }
      setState(next);
    };
    load().catch((error) => setState({ error: error.message }));
    const timer = setInterval(() => load().catch(() => {}), 5000);
    return () => clearInterval(timer);
  }, [schema]);
  if (!state) return null;
  const workers = state.workers;
  return html`<section class="card admin" aria-labelledby="admin-title">
    <h2 id="admin-title">Administration</h2>
    ${state.error && html`<p class="error">${state.error}</p>`}
    <p>Live workers: <strong>${workers ? (workers.embedded ? 'embedded' : workers.alive ?? 0) : '?'}</strong>
      · Queued: <strong>${state.queued ?? '?'}</strong></p>
    ${state.users &&
    html`<h3>Users</h3><table><thead><tr><th>email</th><th>role</th></tr></thead><tbody>
      ${state.users.map((user) => html`<tr><td>${user.email}</td><td>${user.role}</td></tr>`)}
    </tbody></table>`}
    ${state.calculations &&
    html`<h3>All calculations</h3><table><thead><tr><th>owner</th><th>kind</th><th>status</th>
      <th>progress</th></tr></thead><tbody>
      ${state.calculations.map(
        (c) => html`<tr><td>${c.owner.email}</td><td>${c.kind}</td><td>${c.status}</td>
          <td>${Math.round(c.progress * 100)} %</td></tr>`,
      )}</tbody></table>`}
  </section>`;
}

// ---------------------------------------------------------------------------- the app

function Console({ schema, session }) {
  const { rows, byId, histories, take } = useCalculations(schema);
  const [selectedId, setSelectedId] = useState(null);
  const [error, setError] = useState(null);
  const selected = selectedId ? byId.get(selectedId) : null;

  const onAction = async (action, calculation) => {
    setError(null);
    try {
      if (action === 'cancel') {
        const data = await request(
          `mutation($id: ID!) { cancelCalculation(id: $id) { ${rowFields(schema, ['png'])} } }`,
          { id: calculation.id },
        );
        take(data.cancelCalculation);
      } else {
        const data = await request(
          `mutation($id: ID!) { resubmitCalculation(id: $id) { ${rowFields(schema, ['png'])} } }`,
          { id: calculation.id },
        );
        take(data.resubmitCalculation);
        setSelectedId(data.resubmitCalculation.id);
      }
    } catch (failure) {
      setError(failure.message);
    }
  };

  return html`<div class="layout">
    <div class="column">
      <${SubmitForm} schema=${schema} onSubmitted=${(calculation) => {
        take(calculation);
        setSelectedId(calculation.id);
      }} />
      ${session.user.role === 'ADMIN' && html`<${Admin} schema=${schema} />`}
    </div>
    <div class="column wide">
      <${CalculationList} rows=${rows} selectedId=${selectedId} onSelect=${setSelectedId}
        onAction=${onAction} error=${error} />
      ${selected &&
      html`<${Detail} schema=${schema} calculation=${selected}
        history=${histories.get(selected.id) || []} />`}
    </div>
  </div>`;
}

function App() {
  const [session, setSession] = useState(loadSession());
  const [schema, setSchema] = useState(null);
  const [error, setError] = useState(null);
  useEffect(() => onSession(setSession), []);
  useEffect(() => {
    if (session && !schema) {
      Schema.load().then(setSchema).catch((failure) => setError(failure.message));
    }
  }, [session, schema]);

  return html`<header class="top">
      <h1>crunchql</h1>
      ${session &&
      html`<span class="who">${session.user.email} (${session.user.role})</span>
        <button type="button" class="secondary" onClick=${() => signOut(schema && schema.has('Mutation', 'logout'))}>
          Sign out</button>`}
    </header>
    <main>
      ${!session && html`<${SignIn} onError=${setError} error=${error} />`}
      ${session && !schema && html`<p class="help">${error || 'Loading the schema…'}</p>`}
      ${session && schema && html`<${Console} key=${session.user.id} schema=${schema} session=${session} />`}
    </main>`;
}

render(html`<${App} />`, document.getElementById('app'));
