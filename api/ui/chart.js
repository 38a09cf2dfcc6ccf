// SVG line charts and number formatting for the dashboard (app.js), drawn
// by hand so that the page loads nothing from other origins.

// Seconds between two labels on the time axis.
const TICK_SLOTS = 15;
// Series colours in style.css: .series-0 to .series-5.
const SERIES_COLOURS = 6;
const SVG_NS = 'http://www.w3.org/2000/svg';
// Chart size in SVG user units. The SVG scales to the width of its column.
const CHART = {width: 400, height: 150, left: 44, right: 14, top: 10, bottom: 20};

// Draws a line chart of slots start..end as an SVG figure with a legend.
// series: [{name, values: Map(slot -> value)}]. limit, when set, is drawn
// as a dashed line, and the y axis always reaches it.
export function lineChart({kind, title, series, start, end, now, limit}) {
  const plotWidth = CHART.width - CHART.left - CHART.right;
  const plotHeight = CHART.height - CHART.top - CHART.bottom;
  const inWindow = (slot) => slot >= start && slot <= end;
  let maxValue = limit || 0;
  for (const {values} of series) {
    values.forEach((value, slot) => { if (inWindow(slot)) maxValue = Math.max(maxValue, value); });
  }
  // Two to four intervals of a round step, with 10% of room above the data.
  const step = niceStep((maxValue * 1.1) / 4);
  const yMax = Math.max(1, Math.ceil((maxValue * 1.1) / step)) * step;
  const x = (slot) => CHART.left + ((slot - start) / Math.max(1, end - start)) * plotWidth;
  const y = (value) => CHART.top + plotHeight - (value / yMax) * plotHeight;

  const svg = svgEl('svg', {class: 'chart', viewBox: `0 0 ${CHART.width} ${CHART.height}`, role: 'img', 'aria-label': `${title}, ${kind} per second`});
  for (let i = 0; i * step <= yMax; i++) {
    const value = i * step;
    svg.append(svgEl('line', {class: i === 0 ? 'axis' : 'gridline', x1: CHART.left, x2: CHART.width - CHART.right, y1: y(value), y2: y(value)}));
    svg.append(svgText(formatAmount(value), CHART.left - 6, y(value) + 4, 'end'));
  }
  // Time labels every TICK_SLOTS seconds, counted from the current second.
  for (let slot = start; slot <= end; slot++) {
    if ((slot - now) % TICK_SLOTS === 0) {
      svg.append(svgText(slotLabel(slot, now), x(slot), CHART.height - 6, 'middle'));
    }
  }
  if (kind === 'quota' && inWindow(now)) {
    svg.append(svgEl('line', {class: 'now-line', x1: x(now), x2: x(now), y1: CHART.top, y2: CHART.top + plotHeight}));
  }
  if (limit !== undefined) {
    svg.append(svgEl('line', {class: 'limit-line', 'data-limit': String(limit), x1: CHART.left, x2: CHART.width - CHART.right, y1: y(limit), y2: y(limit)}));
    // The label sits at the left end, away from the newest data.
    svg.append(svgText(`limit ${formatAmount(limit)}`, CHART.left + 4, y(limit) - 4, 'start', 'limit-label'));
  }
  let drawn = false;
  series.forEach(({name, values}, i) => {
    const d = pathData(values, start, end, x, y);
    if (d !== '') {
      drawn = true;
      svg.append(svgEl('path', {class: `series series-${i % SERIES_COLOURS}`, 'data-chart': kind, 'data-series': name, d}));
    }
  });
  if (!drawn) {
    svg.append(svgText(`no data in the last ${end - start + 1} s`, CHART.left + plotWidth / 2, CHART.top + plotHeight / 2, 'middle', 'empty'));
  }
  return el('figure', {'data-chart': kind, 'data-resource': title},
    el('figcaption', {}, title), svg, legend(series, inWindow));
}

// Returns the SVG path of one series: a line through the slots that have a
// value, broken where a slot has none. Each piece starts with a zero-length
// segment ("h0"), which the round line cap draws as a dot, so a lone value
// stays visible.
function pathData(values, start, end, x, y) {
  let d = '';
  let drawing = false;
  for (let slot = start; slot <= end; slot++) {
    if (!values.has(slot)) {
      drawing = false;
      continue;
    }
    const point = `${x(slot).toFixed(1)},${y(values.get(slot)).toFixed(1)}`;
    d += drawing ? `L${point}` : `M${point}h0`;
    drawing = true;
  }
  return d;
}

// Builds the legend: each series with its colour and newest value.
function legend(series, inWindow) {
  return el('ul', {class: 'legend'}, ...series.map(({name, values}, i) => {
    const slots = [...values.keys()].filter(inWindow);
    const newest = slots.length > 0 ? values.get(Math.max(...slots)) : undefined;
    return el('li', {}, el('span', {class: `swatch series-${i % SERIES_COLOURS}`}), `${name}: ${formatOptional(newest)}`);
  }));
}

// Returns the smallest of 1, 2 or 5 times a power of ten that is at least
// value, so that the axis labels stay round. Returns 1 for 0.
function niceStep(value) {
  if (!(value > 0)) {
    return 1;
  }
  const power = 10 ** Math.floor(Math.log10(value));
  for (const multiple of [1, 2, 5]) {
    if (multiple * power >= value) {
      return multiple * power;
    }
  }
  return 10 * power;
}

// ---- Formatting -----------------------------------------------------------

// Formats a number with three significant digits and an SI prefix
// (k = 1,000), for example 1048576 as "1.05 M".
export function formatAmount(value) {
  for (const [scale, prefix] of [[1e12, 'T'], [1e9, 'G'], [1e6, 'M'], [1e3, 'k']]) {
    if (Math.abs(value) >= scale) {
      return `${Number((value / scale).toPrecision(3))} ${prefix}`;
    }
  }
  return String(Number(value.toPrecision(3)));
}

export function formatOptional(value) {
  return value === undefined ? '–' : formatAmount(value);
}

// Returns a slot relative to the current one: "now", "-15 s", "+2 s".
export function slotLabel(slot, now) {
  const offset = slot - now;
  if (offset === 0) {
    return 'now';
  }
  return offset > 0 ? `+${offset} s` : `${offset} s`;
}

// ---- DOM helpers ----------------------------------------------------------

// Creates an HTML element with attributes (undefined ones are skipped) and
// children (strings become text nodes).
export function el(tag, attributes, ...children) {
  const element = document.createElement(tag);
  setAttributes(element, attributes);
  element.append(...children);
  return element;
}

function svgEl(tag, attributes) {
  const element = document.createElementNS(SVG_NS, tag);
  setAttributes(element, attributes);
  return element;
}

function svgText(text, x, y, anchor, className) {
  const element = svgEl('text', {x, y, 'text-anchor': anchor, class: className});
  element.textContent = text;
  return element;
}

function setAttributes(element, attributes) {
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value !== undefined) {
      element.setAttribute(name, String(value));
    }
  }
}
