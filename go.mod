module github.com/throttlecentral/throttle-central

go 1.26.8
