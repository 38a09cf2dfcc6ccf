package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"reflect"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/throttlecentral/throttle-central/edge"
	"github.com/throttlecentral/throttle-central/quota"
)

// maxBodyBytes bounds a request body, as on the central.
const maxBodyBytes = 1 << 20

// throttleClient is the part of the edge client that the API uses.
type throttleClient interface {
	Decide(service, user string) edge.Decision
	Consume(service, user string, amounts map[string]float64)
	Stats() edge.Stats
}

// api is the agent's local HTTP API. It is built on net/http's ServeMux
// rather than Echo, because the application calls it on every request:
// four routes need no framework, and the standard mux adds nothing to each
// call.
type api struct {
	client throttleClient
	nodeID string
	log    *slog.Logger
	mux    *http.ServeMux

	checks   *prometheus.CounterVec
	consumes prometheus.Counter
}

// routes maps each path to its method, so that another method gets 405.
var routes = map[string]string{
	"/v1/consume":  http.MethodPost,
	"/v1/throttle": http.MethodGet,
	"/v1/stats":    http.MethodGet,
	"/healthz":     http.MethodGet,
	"/metrics":     http.MethodGet,
}

func newAPI(client throttleClient, nodeID string, logger *slog.Logger, registry *prometheus.Registry) *api {
	a := &api{
		client: client,
		nodeID: nodeID,
		log:    logger.With(slog.String("component", "agent-api")),
		mux:    http.NewServeMux(),
		checks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "throttle_agent_checks_total",
			Help: "Throttle checks, by result (allowed or rejected).",
		}, []string{"result"}),
		consumes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "throttle_agent_consumes_total",
			Help: "Consume requests counted.",
		}),
	}
	registry.MustRegister(a.checks, a.consumes, statsCollector{client: client})

	a.mux.HandleFunc("POST /v1/consume", a.consume)
	a.mux.HandleFunc("GET /v1/throttle", a.throttle)
	a.mux.HandleFunc("GET /v1/stats", a.stats)
	a.mux.HandleFunc("GET /healthz", a.health)
	a.mux.Handle("GET /metrics", promhttp.HandlerFor(registry, promhttp.HandlerOpts{}))
	a.mux.HandleFunc("/", a.noRoute)
	return a
}

func (a *api) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.mux.ServeHTTP(w, r)
}

// consumeRequest is the body of POST /v1/consume. The amounts stay raw
// until validate, so that an error can name the resource.
type consumeRequest struct {
	Service *string                    `json:"service"`
	User    *string                    `json:"user"`
	Amounts map[string]json.RawMessage `json:"amounts"`
}

// consume adds a request's consumption to the user's count of this second.
func (a *api) consume(w http.ResponseWriter, r *http.Request) {
	var body consumeRequest
	if status, err := decodeBody(w, r, &body); err != nil {
		writeError(w, status, err.Error())
		return
	}
	amounts, err := body.validate()
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	a.client.Consume(*body.Service, *body.User, amounts)
	a.consumes.Inc()
	w.WriteHeader(http.StatusNoContent)
}

// validate checks the fields as the central checks a report, so that
// nothing accepted here makes the central reject a report, and returns the
// amounts.
func (b *consumeRequest) validate() (map[string]float64, error) {
	if b.Service == nil {
		return nil, errors.New("invalid input: service is missing")
	}
	if err := quota.ValidateName("service", *b.Service); err != nil {
		return nil, err
	}
	if b.User == nil {
		return nil, errors.New("invalid input: user is missing")
	}
	if err := quota.ValidateName("user", *b.User); err != nil {
		return nil, err
	}
	if len(b.Amounts) == 0 {
		return nil, errors.New(`invalid input: amounts is missing or empty; give at least one resource, for example {"traffic_up": 1024}`)
	}
	amounts := make(map[string]float64, len(b.Amounts))
	for resource, raw := range b.Amounts {
		if err := quota.ValidateName("resource", resource); err != nil {
			return nil, fmt.Errorf("%w (in amounts)", err)
		}
		field := "amounts." + resource
		amount, err := parseAmount(field, raw)
		if err != nil {
			return nil, err
		}
		if err := quota.CheckAmount(field, amount); err != nil {
			return nil, err
		}
		amounts[resource] = amount
	}
	return amounts, nil
}

// parseAmount decodes one JSON number. Null, strings and numbers beyond
// the range of float64 are errors that name field.
func parseAmount(field string, raw json.RawMessage) (float64, error) {
	text := string(raw)
	var amount float64
	if text != "null" && json.Unmarshal(raw, &amount) == nil {
		return amount, nil
	}
	if len(text) > 40 {
		text = text[:40] + "..."
	}
	if first := text[0]; first == '-' || (first >= '0' && first <= '9') {
		return 0, fmt.Errorf("invalid input: %s is %s; it must be at most 2^53", field, text)
	}
	return 0, fmt.Errorf("invalid input: %s is %s; it must be a number", field, text)
}

// throttleResponse is the body of GET /v1/throttle.
type throttleResponse struct {
	Allowed     bool     `json:"allowed"`
	Source      string   `json:"source"`
	Resource    string   `json:"resource,omitempty"`
	Quota       *float64 `json:"quota,omitempty"`
	Consumption *float64 `json:"consumption,omitempty"`
	Reason      string   `json:"reason,omitempty"`
}

// throttle decides whether a request of the user may be served now. It
// replies 200 when allowed, and 429 with the exhausted resource, its quota,
// the consumption so far and the reason when not.
func (a *api) throttle(w http.ResponseWriter, r *http.Request) {
	query := r.URL.Query()
	service, user := query.Get("service"), query.Get("user")
	for _, param := range []struct{ name, value string }{{"service", service}, {"user", user}} {
		if !query.Has(param.name) {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("invalid input: the query parameter %s is missing; use /v1/throttle?service=<name>&user=<name>", param.name))
			return
		}
		if err := quota.ValidateName(param.name, param.value); err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
	}

	decision := a.client.Decide(service, user)
	response := throttleResponse{Allowed: decision.Allowed, Source: decision.Source.String()}
	if decision.Allowed {
		a.checks.WithLabelValues("allowed").Inc()
		writeJSON(w, http.StatusOK, response)
		return
	}
	a.checks.WithLabelValues("rejected").Inc()
	if decision.Resource != "" {
		response.Resource = decision.Resource
		response.Quota = &decision.Quota
		response.Consumption = &decision.Consumption
	}
	response.Reason = decision.Err().Error()
	// Quotas are per second, so the next second may allow the request.
	w.Header().Set("Retry-After", "1")
	writeJSON(w, http.StatusTooManyRequests, response)
}

// stats returns the edge client's report outcomes.
func (a *api) stats(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, struct {
		NodeID string `json:"node_id"`
		edge.Stats
	}{a.nodeID, a.client.Stats()})
}

func (a *api) health(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// noRoute replies 405 for a known path with another method, else 404.
func (a *api) noRoute(w http.ResponseWriter, r *http.Request) {
	if method, known := routes[r.URL.Path]; known {
		w.Header().Set("Allow", method)
		writeErrorCode(w, http.StatusMethodNotAllowed, "method_not_allowed",
			fmt.Sprintf("%s %s is not supported; use %s", r.Method, r.URL.Path, method))
		return
	}
	writeErrorCode(w, http.StatusNotFound, "not_found",
		fmt.Sprintf("no route %s %s; the routes are POST /v1/consume, GET /v1/throttle, GET /v1/stats, GET /healthz and GET /metrics", r.Method, r.URL.Path))
}

// decodeBody decodes a JSON body of at most maxBodyBytes into dst and
// rejects unknown fields and trailing data. It returns the status and a
// message that names the field for an invalid body.
func decodeBody(w http.ResponseWriter, r *http.Request, dst any) (int, error) {
	decoder := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	decoder.DisallowUnknownFields()
	err := decoder.Decode(dst)
	if err == nil {
		if decoder.Decode(&struct{}{}) != io.EOF {
			return http.StatusBadRequest, errors.New("invalid input: the body contains data after the JSON object; send one object")
		}
		return 0, nil
	}

	var (
		tooLarge  *http.MaxBytesError
		syntax    *json.SyntaxError
		typeError *json.UnmarshalTypeError
	)
	switch {
	case errors.As(err, &tooLarge):
		return http.StatusRequestEntityTooLarge, fmt.Errorf("request body is larger than the maximum of %d bytes", maxBodyBytes)
	case errors.Is(err, io.EOF):
		return http.StatusBadRequest, errors.New(`invalid input: the body is empty; send {"service": "...", "user": "...", "amounts": {"<resource>": <amount>}}`)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return http.StatusBadRequest, errors.New("invalid input: the body is not valid JSON: it ends before the object is complete")
	case errors.As(err, &syntax):
		return http.StatusBadRequest, fmt.Errorf("invalid input: the body is not valid JSON at byte %d: %v", syntax.Offset, syntax)
	case errors.As(err, &typeError):
		return http.StatusBadRequest, fmt.Errorf("invalid input: %s is a JSON %s; it must be %s", typeError.Field, typeError.Value, describeType(typeError.Type))
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return http.StatusBadRequest, fmt.Errorf("invalid input: %s; the fields are service, user and amounts", strings.TrimPrefix(err.Error(), "json: "))
	}
	return http.StatusBadRequest, fmt.Errorf("invalid input: %v", err)
}

// describeType names the JSON type that decodes into t.
func describeType(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Map, reflect.Struct:
		return "an object"
	case reflect.String:
		return "a string"
	}
	return t.String()
}

// errorBody is the JSON shape of every error, the same as the central's.
type errorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// writeError writes a 400 or 413 error.
func writeError(w http.ResponseWriter, status int, message string) {
	code := "invalid"
	if status == http.StatusRequestEntityTooLarge {
		code = "body_too_large"
	}
	writeErrorCode(w, status, code, message)
}

func writeErrorCode(w http.ResponseWriter, status int, code, message string) {
	var body errorBody
	body.Error.Code, body.Error.Message = code, message
	writeJSON(w, status, body)
}

func writeJSON(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	// An error here means the application closed the connection, so the
	// error cannot be reported to it.
	_ = json.NewEncoder(w).Encode(body)
}

// statsCollector exports the edge client's Stats as Prometheus metrics.
type statsCollector struct {
	client throttleClient
}

var (
	reportsDesc = prometheus.NewDesc("throttle_edge_reports_total",
		"Reports by outcome: sent (a central replied with quotas), failed (no central replied in time), rejected (a central replied 400 or 413), skipped (the loop ran late).",
		[]string{"outcome"}, nil)
	failoversDesc = prometheus.NewDesc("throttle_edge_failovers_total",
		"Moves to the next central after a failed report request.", nil, nil)
	invalidEntriesDesc = prometheus.NewDesc("throttle_edge_invalid_entries_total",
		"Report entries left out because the central would reject their names.", nil, nil)
	quotaSlotsDesc = prometheus.NewDesc("throttle_edge_quota_slots",
		"Seconds for which quotas are cached.", nil, nil)
	lastReportSlotDesc = prometheus.NewDesc("throttle_edge_last_report_slot",
		"Unix second of the last report a central replied to.", nil, nil)
)

func (statsCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- reportsDesc
	ch <- failoversDesc
	ch <- invalidEntriesDesc
	ch <- quotaSlotsDesc
	ch <- lastReportSlotDesc
}

func (c statsCollector) Collect(ch chan<- prometheus.Metric) {
	stats := c.client.Stats()
	ch <- prometheus.MustNewConstMetric(reportsDesc, prometheus.CounterValue, float64(stats.ReportsSent), "sent")
	ch <- prometheus.MustNewConstMetric(reportsDesc, prometheus.CounterValue, float64(stats.ReportsFailed), "failed")
	ch <- prometheus.MustNewConstMetric(reportsDesc, prometheus.CounterValue, float64(stats.ReportsRejected), "rejected")
	ch <- prometheus.MustNewConstMetric(reportsDesc, prometheus.CounterValue, float64(stats.ReportsSkipped), "skipped")
	ch <- prometheus.MustNewConstMetric(failoversDesc, prometheus.CounterValue, float64(stats.Failovers))
	ch <- prometheus.MustNewConstMetric(invalidEntriesDesc, prometheus.CounterValue, float64(stats.InvalidEntries))
	ch <- prometheus.MustNewConstMetric(quotaSlotsDesc, prometheus.GaugeValue, float64(stats.QuotaSlots))
	ch <- prometheus.MustNewConstMetric(lastReportSlotDesc, prometheus.GaugeValue, float64(stats.LastReportSlot))
}
