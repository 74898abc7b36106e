# Thin wrapper over the two README commands; the build itself is Meson.
.PHONY: all run test format clean

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

# Apply .clang-format to every C file (scripts/test.sh checks it).
format:
	git ls-files '*.c' '*.h' | xargs clang-format -i

clean:
	rm -rf build build-san build-clang build-fuzz
