package main

import (
	"fmt"
	"strconv"
	"time"
)

// durationValue is a duration flag whose parse error names the value and
// the expected form, where the flag package's own is only "parse error".
type durationValue time.Duration

func newDurationValue(p *time.Duration, value time.Duration) *durationValue {
	*p = value
	return (*durationValue)(p)
}

func (d *durationValue) String() string { return time.Duration(*d).String() }

func (d *durationValue) Set(text string) error {
	v, err := time.ParseDuration(text)
	if err != nil {
		return fmt.Errorf("%q is not a duration; give a number with a unit, for example 5s, 500ms or 1m", text)
	}
	*d = durationValue(v)
	return nil
}

// intValue is an integer flag whose parse error names the value.
type intValue int

func newIntValue(p *int, value int) *intValue {
	*p = value
	return (*intValue)(p)
}

func (i *intValue) String() string { return strconv.Itoa(int(*i)) }

func (i *intValue) Set(text string) error {
	v, err := strconv.Atoi(text)
	if err != nil {
		return fmt.Errorf("%q is not a whole number", text)
	}
	*i = intValue(v)
	return nil
}
