# Finds Debian's Python 3 with NumPy and pybind11 (pybind11-dev, python3-numpy, python3-dev):
# sets PATCHCORE_PYTHON_FOUND. A python3 earlier on PATH (pyenv, a venv) may lack NumPy, so
# /usr/bin/python3 is preferred unless -DPython3_EXECUTABLE names another.
if(NOT DEFINED Python3_EXECUTABLE AND EXISTS /usr/bin/python3)
  set(Python3_EXECUTABLE /usr/bin/python3 CACHE FILEPATH "Python for the patchcore module")
endif()
set(PATCHCORE_PYTHON_FOUND OFF)
find_package(Python3 3.9 COMPONENTS Interpreter Development.Module NumPy QUIET)
if(Python3_FOUND)
  set(PYBIND11_FINDPYTHON ON)
  find_package(pybind11 2.10 CONFIG QUIET)
endif()
if(Python3_FOUND AND pybind11_FOUND)
  set(PATCHCORE_PYTHON_FOUND ON)
  message(STATUS "patchcore Python module: ${Python3_EXECUTABLE} ${Python3_VERSION}, "
                 "pybind11 ${pybind11_VERSION}")
else()
  message(STATUS "patchcore Python module: not built (needs pybind11-dev, python3-dev and "
                 "python3-numpy for ${Python3_EXECUTABLE})")
endif()
