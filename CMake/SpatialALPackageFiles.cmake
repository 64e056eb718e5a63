# The files the extension installs of one of its Python packages (spatial_al, SpatialALSlicerLib): its scripts,
# byte-compiled and installed by ctkMacroCompilePythonScript, and every other file, which the package reads at run time
# through importlib.resources (the protocols' JSON) or which describes it (py.typed), copied as it is.
# Included by CMakeLists.txt and by Testing/list_package_files.cmake, through which a test checks that an installed
# extension holds every file the backend reads.
function(spatial_al_package_files package source_dir scripts_var data_var)
  file(GLOB_RECURSE _files RELATIVE ${source_dir}/${package} ${source_dir}/${package}/*)
  list(FILTER _files EXCLUDE REGEX "(^|/)__pycache__/|\\.py[co]$")
  set(_scripts ${_files})
  list(FILTER _scripts INCLUDE REGEX "\\.py$")
  set(_data ${_files})
  list(FILTER _data EXCLUDE REGEX "\\.py$")
  set(${scripts_var} ${_scripts} PARENT_SCOPE)
  set(${data_var} ${_data} PARENT_SCOPE)
endfunction()
