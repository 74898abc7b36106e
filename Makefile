# Thin wrapper over the two README commands; the build itself is Meson.
.PHONY: all run test clean

all:
	bash scripts/setup.sh
	[ -f build/build.ninja ] || meson setup build
	ninja -C build

# Set up and run the main job on its embedded default.
run:
	bash scripts/run.sh

# Set up and run every test (gcc, ASan+UBSan, clang, fuzzers).
test:
	bash scripts/test.sh

clean:
	rm -rf build build-san build-clang build-fuzz
