# cmake -DPACKAGE=spatial_al -DSOURCE_DIR=<repository> -P list_package_files.cmake
# Prints "script <path>" and "data <path>" for each file the extension's CMakeLists.txt installs of PACKAGE.
include(${CMAKE_CURRENT_LIST_DIR}/../CMake/SpatialALPackageFiles.cmake)
spatial_al_package_files(${PACKAGE} ${SOURCE_DIR} scripts data)
foreach(file ${scripts})
  message(STATUS "script ${file}")
endforeach()
foreach(file ${data})
  message(STATUS "data ${file}")
endforeach()
